"""Generation speed under interventions on the embedded SmolLM2, as ratios measured side by side in one run.

    .venv/bin/python benchmarks/interventions.py [--prompts 8] [--new-tokens 32] [--repeats 3] [--sweep 6] [--device cpu]

Rows (medians over interleaved repeats of paired ratios):
- generate tokens/s with Steer (4 layers, all positions) / plain generate          (target >= 0.95)
- generate tokens/s with ActivationCap (8 layers) / plain generate                 (target >= 0.95)
- a k-coefficient sweep in one batched generate (per-row coefficients) vs k separate generates: speed-up
Greedy decoding with a fixed number of new tokens (no early stop), so every run generates the same count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import persona_axes as pa
from persona_axes.activations.batch import pad_batch, render_all
from persona_axes.steering.capping import ActivationCap, calibrate_cap
from persona_axes.steering.interventions import Steer

QUESTIONS = ["What is your favourite season and why?", "Describe the sea to someone who has never seen it.",
             "Give me one tip for learning a language.", "Who are you?", "What makes a city pleasant?",
             "How should I prepare for a job interview?", "Tell me a short fact about bees.",
             "What would you do with a free afternoon?"]


def batch(loaded, convs):
    rendered = render_all(loaded.tokenizer, convs, add_generation_prompt=True)
    ids, mask, _ = pad_batch([r.input_ids for r in rendered], 0, "left")
    return ids, mask


def generate(loaded, ids, mask, n_new):
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                                    do_sample=False, pad_token_id=0, temperature=None, top_p=None, top_k=None)
    if out.device.type == "cuda":  # time the work, not the launch
        torch.cuda.synchronize()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweep", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    loaded = pa.load_model(device=args.device)
    n_layers, d = loaded.layers.n_layers, loaded.layers.hidden_size
    convs = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(args.prompts)]
    ids, mask = (t.to(loaded.model.device) for t in batch(loaded, convs))
    g = torch.Generator().manual_seed(0)
    vector = torch.randn(n_layers, d, generator=g)
    ref = pa.capture(loaded, [c + [{"role": "assistant", "content": "Sure, here is my answer."}] for c in convs],
                     progress=False)
    cap = calibrate_cap(vector, ref, layers=range(12, 20), percentile=25)

    def plain():
        generate(loaded, ids, mask, args.new_tokens)

    def steered():
        with Steer(loaded, vector, layers=[10, 11, 12, 13], coef=2.0):
            generate(loaded, ids, mask, args.new_tokens)

    def capped():
        with ActivationCap(loaded, cap):
            generate(loaded, ids, mask, args.new_tokens)

    k = args.sweep
    one_ids, one_mask = ids[:1], mask[:1]
    coefs = torch.linspace(-4, 4, k)

    def sweep_batched():
        with Steer(loaded, vector, layers=[12], coef=coefs):
            generate(loaded, one_ids.expand(k, -1), one_mask.expand(k, -1), args.new_tokens)

    def sweep_separate():
        for c in coefs.tolist():
            with Steer(loaded, vector, layers=[12], coef=c):
                generate(loaded, one_ids, one_mask, args.new_tokens)

    runs = {"plain": plain, "steer": steered, "cap": capped, "sweep_batched": sweep_batched,
            "sweep_separate": sweep_separate}
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)

    def speed_ratio(a, b):  # tokens/s of a over tokens/s of b = time b / time a
        return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))

    toks = args.prompts * args.new_tokens
    plain_s = statistics.median(times["plain"])
    where = (torch.cuda.get_device_name(loaded.model.device) if loaded.model.device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"\nSmolLM2-135M-Instruct, batch {args.prompts} x {args.new_tokens} new tokens (greedy, KV cache), "
          f"{args.repeats} interleaved repeats, torch {torch.__version__}, {where}")
    print(f"plain generate: median {plain_s:.2f} s = {toks / plain_s:.1f} tokens/s\n")
    print(f"{'measurement':<52} {'ratio':>7}  target")
    print(f"{'tokens/s with Steer (4 layers) / plain':<52} {speed_ratio('steer', 'plain'):>7.3f}  >= 0.95")
    print(f"{'tokens/s with ActivationCap (8 layers) / plain':<52} {speed_ratio('cap', 'plain'):>7.3f}  >= 0.95")
    print(f"{f'{k}-coefficient sweep: one batch vs {k} runs (speed-up)':<52} "
          f"{speed_ratio('sweep_batched', 'sweep_separate'):>7.3f}  > 1")


if __name__ == "__main__":
    main()
