"""Peak memory of trait-vector extraction as the number of samples grows, on the embedded SmolLM2.

    .venv/bin/python benchmarks/memory.py [--samples 64,256,1024] [--repeats 1] [--batch-size 16] [--threads 1] \
        [--device cpu] [--json benchmarks/memory.json]

Each size runs in a fresh process (sizes interleaved when repeated): load the model, warm up on 4 chats, reset the
peak, then extract: ``capture`` of all 30 layers (mean over the reply's content tokens) of N/2 "pos" chats and of
N/2 "neg" chats, followed by ``trait_vector(method="mean_diff")``. Reported: peak memory above the loaded model
(peak RSS on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA), the size of the reduced results
(``N x 30 layers x 576 x 4 bytes``, which has to grow with N), and the rest, which should stay flat: capture holds
one batch's forward pass plus the reduced rows, never every token of every layer.

The chats are short on purpose so that 1024 of them run in a few minutes on 2 CPU cores: a user question and a
one- or two-sentence reply from the peers benchmark's dataset, no system prompt of ours (SmolLM2's template then adds
its own short default one): about 62 tokens per chat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import persona_axes as pa  # noqa: E402
from peers import contrastive_chats, device_name, peak_since, reset_peak  # noqa: E402  (benchmarks/peers.py)


def short_chats(n: int) -> list[list[dict[str, str]]]:
    """``n`` chats, alternately pos and neg, without the system prompt and with 1-2 reply sentences."""
    pos, neg = contrastive_chats((n + 1) // 2)
    out = []
    for p, q in zip(pos, neg):
        for conv in (p, q):
            reply = conv[2]["content"].split(". ")
            out.append([conv[1], {"role": "assistant", "content": ". ".join(reply[: 1 + len(out) % 2])}])
    return out[:n]


def extract(loaded, chats, batch_size: int) -> None:
    pos = pa.capture(loaded, chats[0::2], batch_size=batch_size, progress=False)
    neg = pa.capture(loaded, chats[1::2], batch_size=batch_size, progress=False)
    pa.trait_vector(pos, neg)


def probe_main(n: int, batch_size: int, device: str) -> None:
    loaded = pa.load_model(device=device)
    chats = short_chats(n)
    n_tokens = sum(len(pa.render_chat(loaded.tokenizer, c)) for c in chats)
    extract(loaded, chats[:4], batch_size)  # warm-up
    base = reset_peak(loaded.model.device)
    extract(loaded, chats, batch_size)
    print(json.dumps({"peak_mb": peak_since(base, loaded.model.device), "tokens": n_tokens,
                      "device": device_name(loaded), "n_layers": loaded.layers.n_layers,
                      "hidden_size": loaded.layers.hidden_size}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", default="64,256,1024")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        return probe_main(args.probe, args.batch_size, args.device)

    sizes = [int(x) for x in args.samples.split(",")]
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for _ in range(args.repeats):
        for n in sizes:  # interleaved, a fresh process each
            out = subprocess.run([sys.executable, __file__, "--probe", str(n), "--batch-size", str(args.batch_size),
                                  "--threads", str(args.threads), "--device", args.device],
                                 capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"probe for {n} samples failed:\n{out.stderr[-2000:]}")
            runs[n].append(json.loads(out.stdout.strip().splitlines()[-1]))

    n_layers, d = runs[sizes[0]][0]["n_layers"], runs[sizes[0]][0]["hidden_size"]
    print(f"\nSmolLM2-135M-Instruct, extraction (capture all {n_layers} layers, mean over the reply, then mean_diff), "
          f"batch {args.batch_size}, {args.repeats} run(s) per size, device {runs[sizes[0]][0]['device']}")
    print(f"{'samples':>8} {'tokens':>8} {'peak MB':>8} {'results MB':>11} {'peak - results':>15}")
    rows = []
    for n in sizes:
        peak = statistics.median(r["peak_mb"] for r in runs[n])
        results = n * n_layers * d * 4 / 2**20
        rows.append({"samples": n, "tokens": runs[n][0]["tokens"], "peak_mb": peak, "results_mb": results,
                     "rest_mb": peak - results, "runs_mb": [r["peak_mb"] for r in runs[n]]})
        print(f"{n:>8} {runs[n][0]['tokens']:>8} {peak:>8.1f} {results:>11.1f} {peak - results:>15.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch_size": args.batch_size, "device": runs[sizes[0]][0]["device"], "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
