"""Rollout throughput of the two engines on the embedded SmolLM2, measured side by side in one run.

    .venv/bin/python benchmarks/engines.py [--replies 16] [--max-new-tokens 64] [--threads 2] [--repeats 3]
                                           [--batch-size 16] [--concurrency 2]

- HF engine: in-process HF ``generate`` (float32 weights dequantised from the GGUF), batches of ``--batch-size``.
- llama.cpp server: ``llama-cpp-python[server]`` serving the same GGUF (Q4_1) on 127.0.0.1, reached through the
  OpenAI-compatible engine with ``--concurrency`` requests in flight (the server answers one at a time).
Same prompts, same ``max_new_tokens``, greedy, the same number of CPU threads for both. Tokens are counted the
same way for both: each reply re-tokenized with the HF tokenizer (the server's own count is shown beside).
Repeats are interleaved (HF, server, HF, server, ...) and medians reported. Needs scripts/build_llama_cpp.sh.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from persona_axes.engines.base import EngineRequest
from persona_axes.engines.hf import HFEngine
from persona_axes.engines.llama_server import LlamaServer
from persona_axes.engines.openai_http import OpenAIEngine
from persona_axes.model.load import load_model
from persona_axes.steering.generation import SamplingConfig

QUESTIONS = ["What is your favourite season and why?", "Describe the sea to someone who has never seen it.",
             "Give me one tip for learning a language.", "Who are you?", "What makes a city pleasant?",
             "How should I prepare for a job interview?", "Tell me a short fact about bees.",
             "What would you do with a free afternoon?"]


def timed(engine, reqs, sampling):
    t0 = time.perf_counter()
    replies = engine.generate(reqs, sampling)
    return time.perf_counter() - t0, replies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replies", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_model()
    tok = loaded.tokenizer
    reqs = [EngineRequest(f"r{i}", ({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + " " * (i // 8)},), i)
            for i in range(args.replies)]
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)  # greedy
    hf = HFEngine(loaded, batch_size=args.batch_size)
    rows: dict[str, list[tuple[float, int, int]]] = {"HF engine (in-process, fp32)": [],
                                                     "llama.cpp server (Q4_1, HTTP)": []}
    with LlamaServer(threads=args.threads) as server, \
            OpenAIEngine(server.url, server.alias, concurrency=args.concurrency) as http:
        timed(http, reqs[:1], sampling)  # warm-up: first request loads caches
        timed(hf, reqs[:1], sampling)
        for _ in range(args.repeats):
            for name, engine in zip(rows, (hf, http)):
                seconds, replies = timed(engine, reqs, sampling)
                ours = sum(len(tok(r.text, add_special_tokens=False)["input_ids"]) for r in replies)
                theirs = sum(r.completion_tokens or 0 for r in replies)
                rows[name].append((seconds, ours, theirs))

    print(f"{args.replies} replies, greedy, max_new_tokens {args.max_new_tokens}, {args.threads} thread(s); "
          f"HF batch {args.batch_size}, server concurrency {args.concurrency}; median of {args.repeats}")
    print(f"{'engine':32} {'seconds':>8} {'replies/s':>10} {'tokens/s':>9} {'tokens/reply':>13} {'engine count':>13}")
    print("-" * 90)
    for name, runs in rows.items():
        s = statistics.median(r[0] for r in runs)
        tokens = statistics.median(r[1] for r in runs)
        engine_count = statistics.median(r[2] for r in runs)
        print(f"{name:32} {s:8.2f} {args.replies / s:10.2f} {tokens / s:9.1f} {tokens / args.replies:13.1f} "
              f"{engine_count / args.replies if engine_count else float('nan'):13.1f}")


if __name__ == "__main__":
    main()
