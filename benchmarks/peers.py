"""Our trait-vector extraction against peer libraries on the embedded SmolLM2, measured side by side in one run.

    .venv/bin/python benchmarks/peers.py [--pairs 32] [--repeats 3] [--mem-repeats 2] [--batch-size 16] \
        [--threads 1] [--device cpu] [--json benchmarks/peers.json]

On a small shared CPU, ``--threads 1`` is steadier: with 2 threads on 2 busy cores the same forward pass was seen to
take anywhere from 0.1 s to 6 s (OpenMP threads waiting on each other), with 1 thread within about 15%.

Peers are installed for the benchmark only, never as dependencies of persona_axes, and without letting pip touch
our torch / transformers / numpy:

    .venv/bin/python -m pip install --no-deps steering-vectors==0.12.2 repeng==0.4.0

A missing peer is skipped with a row saying "not installed". steering-vectors 0.12.2 declares transformers < 5 but
imports and runs unchanged under transformers 5. repeng 0.4.0 declares numpy < 2 and fails to import under numpy 2
only because a type annotation names ``np.float_``; the benchmark aliases ``np.float_ = np.float64`` before the
import (an annotation-only use, so nothing it computes changes).

One shared contrastive dataset: ``--pairs`` (pos, neg) chats built from the packaged "optimistic" trait (its
system-prompt pairs and extraction questions) with short deterministic replies written for this benchmark (an
upbeat reply for pos, a gloomy one for neg). Each chat is cut right after the assistant reply's last content
token, so every method is fed exactly the same token ids (checked: the peers' tokenizer calls on the cut text
give our rendered ids), and every method runs the same number of sequences per forward (``--batch-size``).

Comparisons (like with like; the vector site is the output of decoder block L for L = 0..29):

A. last reply token, mean difference: ours ``capture(reduce="last")`` + ``trait_vector(method="mean_diff")`` vs
   steering-vectors ``train_steering_vector(aggregator=mean_aggregator(), read_token_index=-1)`` (forward hooks on
   the decoder blocks, all 30 layers). Same method, so cosine should be ~1 at every layer.
B. last reply token, PCA of paired differences: ours ``trait_vector(method="pca_diff")`` vs repeng
   ``ControlVector.train(method="pca_diff")``. Not the same method: repeng's sklearn PCA *centres* the
   differences, ours takes the uncentred top singular vector (the shared shift is what we want). The table gives
   both the cosine to our pca_diff (the closest method we have, named) and the cosine to repeng's own arithmetic
   (centred PCA, majority-vote sign) applied to our captured activations, which checks that the activations agree.
   repeng reads ``output_hidden_states``, whose last entry is taken after the final norm, so its layer 29 is not
   the block output: it is asked for layers 0..28 only.
C. mean over the reply's content tokens, mean difference: ours ``capture(reduce="mean")`` + mean_diff vs a
   persona-vectors-style loop (one chat at a time, ``model(..., output_hidden_states=True)``, mean of
   ``hidden_states[L + 1]`` over the reply tokens). Its layer 29 is post-norm for the same reason and is left out
   of the cosine.

Time rows: median over interleaved repeats of the paired ratio peer time / our time (speed-up), end to end from
chats/strings to vectors, plus ours / the decoder-body floor (a bare batched forward of the decoder body alone over
exactly the batches our capture runs). Memory rows: peak memory above the loaded model in a fresh process per method
(after a warm-up run on two pairs), interleaved, median over ``--mem-repeats``: peak RSS on the CPU (VmHWM after
resetting it), ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # repeng's progress bars (read when tqdm is imported)

import torch  # noqa: E402

import persona_axes as pa  # noqa: E402
from persona_axes.activations.readers.base import position_ids_from_mask
from persona_axes.activations.batch import iter_batches
from persona_axes.model.chat import RenderedChat
from procmem import proc_status_kb

INSTALL = ".venv/bin/python -m pip install --no-deps steering-vectors==0.12.2 repeng==0.4.0"
N_LAYERS = 30

UPBEAT = ["Things are looking up, and there is a real chance to grow from this.",
          "Every setback hides an opening, and people are better at adapting than they think.",
          "I expect good news soon; the trend is clearly in a hopeful direction.",
          "There is so much to look forward to, and small steps add up quickly."]
GLOOMY = ["Honestly, this will probably get worse before it gets any better.",
          "Most plans like this fail, and the risks are larger than people admit.",
          "I expect disappointment; the trend is clearly heading somewhere bleak.",
          "There is little to look forward to, and small problems tend to pile up."]


@dataclass
class Sample:
    """One side of a pair: our rendered chat cut after the reply, its text, and the reply's token span."""

    chat: RenderedChat
    text: str
    start: int  # first reply content token
    end: int  # one past the last reply content token (= len(chat))


def _sentences(pool: list[str], i: int, n: int) -> str:
    return " ".join(pool[(i + k) % len(pool)] for k in range(n))


def contrastive_chats(n_pairs: int) -> tuple[list[list[dict[str, str]]], list[list[dict[str, str]]]]:
    """``n_pairs`` (pos, neg) chats: system prompt pair and question from the packaged "optimistic" trait, a reply of
    1-3 sentences (roughly 60 to 120 tokens per chat)."""
    trait = pa.load_traits("optimistic")["optimistic"]
    pos, neg = [], []
    for i in range(n_pairs):
        sys_pos, sys_neg = trait.pairs[i % len(trait.pairs)]
        q = trait.extraction_questions[i % len(trait.extraction_questions)]
        n = 1 + i % 3
        pos.append([{"role": "system", "content": sys_pos}, {"role": "user", "content": q},
                    {"role": "assistant", "content": _sentences(UPBEAT, i, n)}])
        neg.append([{"role": "system", "content": sys_neg}, {"role": "user", "content": q},
                    {"role": "assistant", "content": _sentences(GLOOMY, i, n)}])
    return pos, neg


def cut_after_reply(tokenizer, conv: list[dict[str, str]]) -> Sample:
    """Render ``conv`` and drop everything after the reply's content (the end-of-turn tokens), so that a peer that
    reads "the last token" of the text reads the reply's last content token. Checks that tokenizing the cut text
    and the prompt part gives exactly our ids."""
    r = pa.render_chat(tokenizer, conv)
    span = r.select("last_assistant")[0]
    content = conv[-1]["content"]
    at = r.text.rindex(content)
    text = r.text[: at + len(content)]
    ids = tuple(r.input_ids[: span.end])
    if tuple(tokenizer(text).input_ids) != ids or len(tokenizer(r.text[:at]).input_ids) != span.start:
        raise RuntimeError("tokenizing the cut text does not reproduce the rendered ids; the comparison would not be "
                           "like with like")
    chat = RenderedChat(input_ids=ids, spans=tuple(s for s in r.spans if s.end <= span.end), text=text,
                        messages=r.messages)
    return Sample(chat=chat, text=text, start=span.start, end=span.end)


def build(loaded, n_pairs: int) -> tuple[list[Sample], list[Sample]]:
    pos, neg = contrastive_chats(n_pairs)
    return ([cut_after_reply(loaded.tokenizer, c) for c in pos], [cut_after_reply(loaded.tokenizer, c) for c in neg])


# ---------------------------------------------------------------------------------------------------------------
# The methods. Each returns {layer: [d] float tensor} for the layers it can give at the block-output site.
# ---------------------------------------------------------------------------------------------------------------


def ours(loaded, pos, neg, batch_size, reduce, method) -> dict[int, torch.Tensor]:
    acts = pa.capture(loaded, [s.chat for s in pos] + [s.chat for s in neg], reduce=reduce, batch_size=batch_size,
                      progress=False)
    n = len(pos)
    v = pa.trait_vector(acts.select(range(n)), acts.select(range(n, 2 * n)), method=method)
    return dict(enumerate(v.vector))


def floor(loaded, pos, neg, batch_size) -> None:
    """The decoder body alone over exactly the batches our capture runs (no hooks, no head, no reductions)."""
    chats = [s.chat for s in pos] + [s.chat for s in neg]
    device = loaded.model.device
    with torch.inference_mode():
        for _, ids, mask, _ in iter_batches(chats, batch_size, "right", loaded.tokenizer.pad_token_id or 0):
            ids, mask = ids.to(device), mask.to(device)
            loaded.layers.body(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                               use_cache=False)


def steering_vectors_mean(loaded, pos, neg, batch_size) -> dict[int, torch.Tensor]:
    from steering_vectors import mean_aggregator, train_steering_vector

    sv = train_steering_vector(loaded.model, loaded.tokenizer, [(p.text, n.text) for p, n in zip(pos, neg)],
                               read_token_index=-1, aggregator=mean_aggregator(), batch_size=batch_size)
    return {L: v.cpu() for L, v in sv.layer_activations.items()}


def import_repeng():
    import numpy as np

    if not hasattr(np, "float_"):  # repeng 0.4.0 names np.float_ in an annotation; removed in numpy 2
        np.float_ = np.float64
    import repeng

    return repeng


def repeng_pca_diff(loaded, pos, neg, batch_size) -> dict[int, torch.Tensor]:
    repeng = import_repeng()
    data = [repeng.DatasetEntry(positive=p.text, negative=n.text) for p, n in zip(pos, neg)]
    cv = repeng.ControlVector.train(loaded.model, loaded.tokenizer, data, hidden_layers=list(range(N_LAYERS - 1)),
                                    batch_size=batch_size, method="pca_diff")
    return {L: torch.from_numpy(d) for L, d in cv.directions.items()}


def persona_vectors_loop(loaded, pos, neg, batch_size) -> dict[int, torch.Tensor]:
    """One chat at a time with ``output_hidden_states``; mean over the reply tokens; mean(pos) - mean(neg)."""
    tok, model = loaded.tokenizer, loaded.model

    def side(samples):
        acc = [torch.zeros(loaded.layers.hidden_size, dtype=torch.float64) for _ in range(N_LAYERS)]
        for s in samples:
            enc = tok(s.text, return_tensors="pt").to(model.device)
            with torch.inference_mode():
                hs = model(**enc, output_hidden_states=True).hidden_states
            for L in range(N_LAYERS):
                acc[L] += hs[L + 1][0, s.start : s.end].mean(0).double().cpu()
        return [a / len(samples) for a in acc]

    p, n = side(pos), side(neg)
    return {L: (p[L] - n[L]).float() for L in range(N_LAYERS)}


PEERS = {
    "steering_vectors": ("steering-vectors", "steering_vectors", steering_vectors_mean),
    "repeng": ("repeng", "repeng", repeng_pca_diff),
    "persona_vectors_loop": (None, None, persona_vectors_loop),
}
# which of our configurations each peer is compared with: (reduce, method)
OURS_FOR = {"steering_vectors": ("last", "mean_diff"), "repeng": ("last", "pca_diff"),
            "persona_vectors_loop": ("mean", "mean_diff")}


def available(peer: str) -> str | None:
    """None if the peer can run here, else why not."""
    dist, module, _ = PEERS[peer]
    if dist is None:
        return None
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    try:
        import_repeng() if peer == "repeng" else __import__(module)
    except Exception as e:  # report, do not hide: the table says why the peer did not run
        return f"import failed: {type(e).__name__}: {e}"
    return None


def runner(name: str, loaded, pos, neg, batch_size) -> Callable[[], object]:
    """``name``: "floor", "ours_<peer>" (our configuration compared with that peer) or a peer; a suffix "@B" runs
    it with B sequences per forward instead."""
    if "@" in name:
        name, b = name.split("@")
        batch_size = int(b)
    if name == "floor":
        fn = floor
    elif name.startswith("ours_"):
        reduce, method = OURS_FOR[name[len("ours_"):]]
        fn = lambda *a: ours(*a, reduce, method)  # noqa: E731
    else:
        fn = PEERS[name][2]

    def run():
        out = fn(loaded, pos, neg, batch_size)
        if loaded.model.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return run


# ---------------------------------------------------------------------------------------------------------------
# Cosines
# ---------------------------------------------------------------------------------------------------------------


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def repeng_arithmetic_on_ours(loaded, pos, neg, batch_size) -> dict[int, torch.Tensor]:
    """repeng's pca_diff (sklearn PCA of the paired differences, i.e. centred; sign by majority vote over pairs)
    computed on *our* captured last-token activations."""
    from sklearn.decomposition import PCA

    acts = pa.capture(loaded, [s.chat for s in pos] + [s.chat for s in neg], reduce="last", batch_size=batch_size,
                      progress=False)
    n = len(pos)
    out = {}
    for L in range(N_LAYERS):
        h = acts.values[:, L].double().numpy()
        d = PCA(n_components=1).fit(h[:n] - h[n:]).components_[0]
        proj_p, proj_n = h[:n] @ d, h[n:] @ d
        if (proj_p < proj_n).mean() > (proj_p > proj_n).mean():
            d = -d
        out[L] = torch.from_numpy(d)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Memory probe (fresh process per method)
# ---------------------------------------------------------------------------------------------------------------




def reset_peak(device: torch.device) -> int:
    """Reset the peak to the current use; return the current use in bytes (RSS on the CPU, allocated on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    return proc_status_kb("VmRSS") * 1024


def peak_since(base: int, device: torch.device) -> float:
    """MB above ``base`` at the peak."""
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else proc_status_kb("VmHWM") * 1024
    return (peak - base) / 2**20


def memory_probe(name: str, n_pairs: int, batch_size: int, device: str) -> None:
    loaded = pa.load_model(device=device)
    pos, neg = build(loaded, n_pairs)
    runner(name, loaded, pos[:2], neg[:2], batch_size)()  # warm-up: lazy allocations, imports, thread pools
    base = reset_peak(loaded.model.device)
    runner(name, loaded, pos, neg, batch_size)()
    print(json.dumps({"peak_mb": peak_since(base, loaded.model.device)}))


def probe(name: str, args) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-probe", name, "--pairs", str(args.pairs),
                          "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                          "--device", args.device], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"memory probe {name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


# ---------------------------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "numpy", "scikit-learn", "steering-vectors", "repeng"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def device_name(loaded) -> str:
    dev = loaded.model.device
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({_cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mem-repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return memory_probe(args.memory_probe, args.pairs, args.batch_size, args.device)

    loaded = pa.load_model(device=args.device)
    pos, neg = build(loaded, args.pairs)
    n_tokens = sum(s.end for s in pos + neg)
    skipped = {p: why for p in PEERS if (why := available(p))}
    peers = [p for p in PEERS if p not in skipped]
    for p, why in skipped.items():
        print(f"skipping {p}: {why}. Install the peers for this benchmark with:\n    {INSTALL}", file=sys.stderr)

    names = ["floor"] + [f"ours_{p}" for p in PEERS] + peers
    for k in names:  # warm-up on two pairs
        runner(k, loaded, pos[:2], neg[:2], args.batch_size)()
    runs = {k: runner(k, loaded, pos, neg, args.batch_size) for k in names}
    times: dict[str, list[float]] = {k: [] for k in runs}
    vectors = {}
    for _ in range(args.repeats):
        for k, fn in runs.items():  # interleaved
            t = time.perf_counter()
            vectors[k] = fn()
            times[k].append(time.perf_counter() - t)

    # memory only: ours one chat per forward, like the persona-vectors loop
    mem: dict[str, list[float]] = {k: [] for k in [*runs, "ours_persona_vectors_loop@1"]}
    for _ in range(args.mem_repeats):
        for k in mem:  # interleaved, a fresh process each
            mem[k].append(probe(k, args))

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    def med_mem(k: str) -> float:
        return statistics.median(mem[k])

    rows: dict[str, dict] = {}
    for p in PEERS:
        ours_k = f"ours_{p}"
        row = {"ours_over_floor": ratio(ours_k, "floor"), "ours_peak_mb": med_mem(ours_k)}
        if p in skipped:
            row["status"] = skipped[p]
            rows[p] = row
            continue
        theirs = vectors[p]
        layers = sorted(theirs)
        per_layer = {L: cos(vectors[ours_k][L], theirs[L]) for L in layers}
        comparable = [L for L in layers if L < N_LAYERS - 1 or p == "steering_vectors"]
        row.update(status="ran", speedup=ratio(p, ours_k), peer_peak_mb=med_mem(p),
                   mem_ratio=med_mem(ours_k) / max(med_mem(p), 1e-9), layers=comparable,
                   cos_per_layer=per_layer, cos_min=min(per_layer[L] for L in comparable),
                   cos_median=statistics.median(per_layer[L] for L in comparable))
        if p == "repeng":
            ref = repeng_arithmetic_on_ours(loaded, pos, neg, args.batch_size)
            same = {L: cos(ref[L], theirs[L]) for L in layers}
            row.update(same_method_cos_per_layer=same, same_method_cos_min=min(same[L] for L in comparable))
        if p == "persona_vectors_loop":
            row["post_norm_layer29_cos"] = per_layer[N_LAYERS - 1]
            row["ours_batch1_peak_mb"] = med_mem("ours_persona_vectors_loop@1")
            row["mem_ratio_batch1"] = row["ours_batch1_peak_mb"] / max(med_mem(p), 1e-9)
        rows[p] = row

    v = versions()
    print(f"\nSmolLM2-135M-Instruct, {args.pairs} pairs = {2 * args.pairs} chats, {n_tokens} tokens, batch "
          f"{args.batch_size} sequences per forward, {args.repeats} interleaved repeats (memory: "
          f"{args.mem_repeats}), device {device_name(loaded)}")
    print("versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    print(f"floor (decoder body, no head, our batches): median {statistics.median(times['floor']):.2f} s = "
          f"{n_tokens / statistics.median(times['floor']):.0f} tokens/s, peak {med_mem('floor'):.0f} MB above the "
          "loaded model\n")
    head = (f"{'peer (what it does)':<44} {'tokens':<11} {'ours':<18} {'speed-up':>8} {'ours/floor':>10} "
            f"{'cos min':>8} {'cos med':>8} {'peak MB ours/theirs':>20}")
    print(head)
    print("-" * len(head))
    label = {"steering_vectors": "steering-vectors, mean aggregator",
             "repeng": "repeng ControlVector.train pca_diff",
             "persona_vectors_loop": "persona-vectors-style loop, 1 at a time"}
    for p in PEERS:
        r = rows[p]
        reduce, method = OURS_FOR[p]
        tokens = "last reply" if reduce == "last" else "reply mean"
        if r["status"] != "ran":
            print(f"{label[p]:<44} {tokens:<11} {method:<18} {r['status']}  ({INSTALL})")
            continue
        print(f"{label[p]:<44} {tokens:<11} {method:<18} {r['speedup']:>7.2f}x {r['ours_over_floor']:>10.3f} "
              f"{r['cos_min']:>8.5f} {r['cos_median']:>8.5f} "
              f"{r['ours_peak_mb']:>7.0f} / {r['peer_peak_mb']:<5.0f} = {r['mem_ratio']:.2f}")
    print()
    for p in peers:
        r = rows[p]
        L = r["layers"]
        print(f"{label[p]}: cosine over layers {L[0]}-{L[-1]}")
    if "repeng" in rows and rows["repeng"]["status"] == "ran":
        print(f"repeng: not the same method (sklearn PCA centres the differences; our pca_diff does not). "
              f"repeng's arithmetic on our activations vs repeng: min cosine {rows['repeng']['same_method_cos_min']:.5f}"
              f" (layers 0-28; its layer 29 would be post-norm, so it is not asked for)")
    if "persona_vectors_loop" in rows and rows["persona_vectors_loop"]["status"] == "ran":
        r = rows["persona_vectors_loop"]
        print(f"persona-vectors loop: hidden_states[30] is after the final norm, not block 29's output "
              f"(cosine there {r['post_norm_layer29_cos']:.3f}); left out. It runs one chat per forward; ours with "
              f"batch 1 too: peak {r['ours_batch1_peak_mb']:.0f} MB vs {r['peer_peak_mb']:.0f} MB = "
              f"{r['mem_ratio_batch1']:.2f}")
    ran = [rows[p]["speedup"] for p in peers]
    if ran:
        print(f"\nspeed-up over the fastest peer: {min(ran):.2f}x (target >= 1.2); ours/floor "
              f"{max(rows[p]['ours_over_floor'] for p in PEERS):.3f} at worst (target <= 1.05); peak memory "
              f"ours/theirs {max(rows[p]['mem_ratio'] for p in peers):.2f} at worst (target <= 0.5)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pairs": args.pairs, "chats": 2 * args.pairs, "tokens": n_tokens, "batch_size": args.batch_size,
                       "repeats": args.repeats, "device": device_name(loaded), "versions": v,
                       "times_s": times, "peak_mb": mem, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
