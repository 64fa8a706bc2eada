"""Capture speed and memory on the embedded SmolLM2, as ratios measured side by side in one run.

    .venv/bin/python benchmarks/capture.py [--samples 64] [--repeats 3] [--batch-size 16] [--device cpu] [--json out.json]

Rows (time ratios are medians over repeats of paired ratios; runs are interleaved so machine noise hits all
alike):
- floor: a bare batched forward of the decoder body alone (no LM head) over exactly the batches capture uses.
- capture, all layers / floor                      (target <= 1.05x)
- capture, layers 0-3 / floor                      (it stops after block 3, so it should cost ~4/30 of the floor)
- full forward with LM head / floor                (what capture avoids)
- capture, one sample at a time / batched capture
- tlens and nnsight backends / floor
- peak memory above the loaded model, in a fresh process each: floor vs capture of all layers (peak RSS on the
  CPU, ``torch.cuda.max_memory_allocated`` on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import persona_axes as pa
from persona_axes.activations.readers.base import position_ids_from_mask
from persona_axes.activations.batch import iter_batches, render_all
from procmem import proc_status_kb

SUBJECTS = ["friendship", "the ocean", "learning to cook", "old maps", "rainy mornings", "chess openings",
            "city gardens", "learning a language", "night trains", "honest feedback", "saving money", "bees"]
SYSTEMS = ["You are a helpful assistant.", "You are a retired sea captain who tells long stories.",
           "You are a strict but fair mathematics teacher.", ""]


def make_conversations(n: int) -> list[list[dict[str, str]]]:
    """Deterministic chat samples of varied length (roughly 40 to 110 tokens each)."""
    convs = []
    for i in range(n):
        subj = SUBJECTS[i % len(SUBJECTS)]
        reply = " ".join(
            f"Sentence {k + 1} about {subj}: it rewards patience, attention and a little curiosity."
            for k in range(1 + i % 5)
        )
        conv = [{"role": "user", "content": f"Tell me what you think about {subj}."},
                {"role": "assistant", "content": reply}]
        if SYSTEMS[i % len(SYSTEMS)]:
            conv.insert(0, {"role": "system", "content": SYSTEMS[i % len(SYSTEMS)]})
        convs.append(conv)
    return convs


def floor_pass(loaded, batches) -> None:
    body = loaded.layers.body
    with torch.inference_mode():
        for ids, mask in batches:
            body(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)


def full_pass(loaded, batches) -> None:
    with torch.inference_mode():
        for ids, mask in batches:
            loaded.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)


def device_batches(loaded, rendered, batch_size):
    dev = loaded.model.device
    return [(ids.to(dev), mask.to(dev)) for _, ids, mask, _ in iter_batches(rendered, batch_size, "right", 0)]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():  # time the work, not the launch
        torch.cuda.synchronize()
    return time.perf_counter() - t


def memory_probe(kind: str, n: int, batch_size: int, device: str) -> None:
    """Run in a fresh process: peak memory above the steady state after loading and one warm-up batch."""
    loaded = pa.load_model(device=device)
    convs = make_conversations(n)
    rendered = render_all(loaded.tokenizer, convs, False)
    batches = device_batches(loaded, rendered, batch_size)
    floor_pass(loaded, batches[:1])
    cuda = loaded.model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 1024
    else:
        with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
            f.write("5")
        base = proc_status_kb("VmRSS")
    if kind == "floor":
        floor_pass(loaded, batches)
    else:
        pa.capture(loaded, rendered, batch_size=batch_size, progress=False)
    peak = torch.cuda.max_memory_allocated() / 1024 if cuda else proc_status_kb("VmHWM")
    print(json.dumps({"peak_mb": (peak - base) / 1024}))




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backends", default="hf,tlens,nnsight")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--memory-probe", choices=["floor", "capture"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe, args.samples, args.batch_size, args.device)

    loaded = pa.load_model(device=args.device)
    convs = make_conversations(args.samples)
    rendered = render_all(loaded.tokenizer, convs, False)
    n_tokens = sum(len(r) for r in rendered)
    batches = device_batches(loaded, rendered, args.batch_size)
    backends = {k: pa.make_backend(loaded, k) for k in args.backends.split(",")}
    runs = {
        "floor": lambda: floor_pass(loaded, batches),
        "full_forward": lambda: full_pass(loaded, batches),
        "capture_all": lambda: pa.capture(backends["hf"], rendered, batch_size=args.batch_size, progress=False),
        "capture_0_3": lambda: pa.capture(backends["hf"], rendered, layers=range(4), batch_size=args.batch_size, progress=False),
        "capture_one_at_a_time": lambda: pa.capture(backends["hf"], rendered, batch_size=1, progress=False),
    }
    for k, be in backends.items():
        if k != "hf":
            runs[f"capture_all_{k}"] = lambda be=be: pa.capture(be, rendered, batch_size=args.batch_size, progress=False)
    for fn in runs.values():  # warm-up (also builds the TL bridge / nnsight wrapper)
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():  # interleaved
            times[k].append(timed(fn))

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    mem = {}
    for kind in ("floor", "capture"):
        out = subprocess.run([sys.executable, __file__, "--memory-probe", kind, "--samples", str(args.samples),
                              "--batch-size", str(args.batch_size), "--device", args.device],
                             capture_output=True, text=True, check=True)
        mem[kind] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]

    floor_s = statistics.median(times["floor"])
    rows = [
        ("capture, all 30 layers / floor", ratio("capture_all", "floor"), "<= 1.05"),
        ("capture, layers 0-3 / floor", ratio("capture_0_3", "floor"), "~ 4/30 = 0.13"),
        ("full forward with LM head / floor", ratio("full_forward", "floor"), "(what capture skips)"),
        ("capture one at a time / batched", ratio("capture_one_at_a_time", "capture_all"), "> 1"),
    ]
    for k in backends:
        if k != "hf":
            rows.append((f"capture {k} backend / floor", ratio(f"capture_all_{k}", "floor"), "close to 1"))
    print(f"\nSmolLM2-135M-Instruct, {args.samples} chats, {n_tokens} tokens, batch {args.batch_size}, "
          f"{args.repeats} interleaved repeats, torch {torch.__version__}, "
          + (torch.cuda.get_device_name(loaded.model.device) if loaded.model.device.type == "cuda"
             else f"{torch.get_num_threads()} threads"))
    print(f"floor (decoder body, no head): median {floor_s:.2f} s = {n_tokens / floor_s:.0f} tokens/s\n")
    print(f"{'measurement':<40} {'ratio':>7}  target")
    for name, r, target in rows:
        print(f"{name:<40} {r:>7.3f}  {target}")
    print(f"\n{'peak memory above loaded model':<40} {'MB':>7}")
    print(f"{'floor forward':<40} {mem['floor']:>7.1f}")
    print(f"{'capture, all layers':<40} {mem['capture']:>7.1f}")
    print(f"{'capture / floor':<40} {mem['capture'] / max(mem['floor'], 1e-9):>7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"times_s": times, "ratios": {n: r for n, r, _ in rows}, "peak_mb": mem,
                       "samples": args.samples, "tokens": n_tokens}, f, indent=1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
