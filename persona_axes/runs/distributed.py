"""Data-parallel extraction and rollouts over ``torchrun`` ranks (one model replica per rank).

Run it with ``torchrun`` (``torch.distributed.run``); every rank runs the same command::

    torchrun --nproc_per_node 8 -m persona_axes.runs.distributed extract \\
        --model Qwen/Qwen3-32B --store run/rollouts.jsonl --out run/activations/role.safetensors --kind role
    torchrun --nproc_per_node 8 -m persona_axes.runs.distributed rollouts \\
        --model Qwen/Qwen3-32B --preset quick --store run/rollouts.jsonl

The process group uses ``nccl`` when CUDA is available and ``gloo`` on CPU; without torchrun's environment
(``WORLD_SIZE`` unset) the same command runs as one process.

Extraction. The conversations are cut into chunks of ``chunk_size`` in their given order, exactly as
:func:`~persona_axes.activations.extraction.extract` cuts them, and chunk ``k`` goes to rank ``k % world_size``. A
rank extracts its chunks (in order) into its own file, ``<out>.rank<r>-of-<W>.safetensors``, with extract's own
checkpoints beside it (``.partial``); since every chunk is computed by the same code on the same conversations
with the same ``batch_size`` as in one process, the merged result is bit-identical to a single-process
``extract`` (``torch.equal``; on GPUs, as far as the kernels are deterministic). After a barrier, rank 0 puts the
rows back in the original conversation order and writes ``<out>``. The rank files stay as the run's checkpoints:
a rank that was killed resumes from its last finished chunk when the same command runs again, and the ranks that
had finished compute nothing.

Rollouts. Request ``i`` (in the order given) goes to rank ``i % world_size``; each rank runs
:func:`~persona_axes.runs.rollouts.run_rollouts` on its requests into its own store,
``<store>.rank<r>-of-<W>.jsonl`` (resumable as any store), skipping ids already in the main store; rank 0 then
appends every shard's records to the main store in the original request order. A reply does not depend on its
batch neighbours (per-request seeds), up to the last-bit float differences another padding can cause; with
``batch_size=1`` the sharded run writes exactly the single-process replies.

Sharded replicas. A replica too big for one GPU is split with accelerate's ``device_map``: with
``--gpus-per-replica G``, local rank ``r`` loads its model over GPUs ``r*G .. r*G+G-1``
(:func:`replica_max_memory`, ``device_map="auto"``), so ``torchrun --nproc_per_node 4`` with ``G=2`` runs four
replicas of a 70B model on eight GPUs. Data parallelism (this module) and model sharding (accelerate) combine
without either knowing about the other; only rank-local GPU indices change.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from persona_axes.activations.container import Activations
from persona_axes.activations.extraction import extract
from persona_axes.core import check_int
from persona_axes.errors import InvalidInputError
from persona_axes.runs.requests import RolloutRequest
from persona_axes.runs.rollouts import run_rollouts
from persona_axes.runs.store import RolloutStore
from persona_axes.steering.generation import SamplingConfig

__all__ = ["Ranks", "init_ranks", "chunk_owner", "rank_chunks", "shard_path", "extract_distributed",
           "merge_extraction", "rollouts_distributed", "replica_max_memory", "main"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        check_int(self.world_size, "world_size", minimum=1)
        check_int(self.local_rank, "local_rank", minimum=0)
        if not 0 <= check_int(self.rank, "rank") < self.world_size:
            raise InvalidInputError(f"rank must be in 0..{self.world_size - 1}, got {self.rank}")

    def barrier(self) -> None:
        """Wait for every rank (a no-op in one process)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def init_ranks() -> Ranks:
    """The ranks from torchrun's environment, with the process group started (``nccl`` on CUDA, else ``gloo``);
    ``Ranks()`` when ``WORLD_SIZE`` is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local % torch.cuda.device_count())
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local)


def chunk_owner(chunk: int, world_size: int) -> int:
    """The rank that computes chunk ``chunk``: ``chunk % world_size``."""
    return chunk % world_size


def rank_chunks(n: int, chunk_size: int, ranks: Ranks) -> list[int]:
    """Indices of the conversations rank ``ranks.rank`` extracts, in order: whole chunks ``[k*c, (k+1)*c)``."""
    check_int(n, "n", minimum=0)
    check_int(chunk_size, "chunk_size", minimum=1)
    n_chunks = -(-n // chunk_size)
    return [i for k in range(n_chunks) if chunk_owner(k, ranks.world_size) == ranks.rank
            for i in range(k * chunk_size, min((k + 1) * chunk_size, n))]


def shard_path(path: str | os.PathLike, ranks: Ranks) -> Path:
    """Rank ``r``'s own file beside ``path``: ``<stem>.rank<r>-of-<W><suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{ranks.rank}-of-{ranks.world_size}{path.suffix}")


def extract_distributed(
    model: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    path: str | os.PathLike,
    *,
    ranks: Ranks | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    chunk_size: int = 64,
    batch_size: int = 16,
    progress: bool = False,
    **extract_options: Any,
) -> Activations | None:
    """Extract this rank's chunks into its own file, then (rank 0) merge all ranks' files into ``path``.

    Same options as :func:`~persona_axes.activations.extraction.extract` (``layers``, ``which``, ``reduce``,
    ...). Returns the merged activations on rank 0 and None on the other ranks (which return after the merge).
    """
    ranks = init_ranks() if ranks is None else ranks
    conversations = list(conversations)
    n = len(conversations)
    if n == 0:
        raise InvalidInputError("no conversations were given")
    if metadata is not None and len(metadata) != n:
        raise InvalidInputError(f"metadata has {len(metadata)} entries for {n} conversations; give one per conversation")
    mine = rank_chunks(n, chunk_size, ranks)
    if mine:
        extract(model, [conversations[i] for i in mine], shard_path(path, ranks), chunk_size=chunk_size,
                batch_size=batch_size, progress=progress,
                metadata=None if metadata is None else [metadata[i] for i in mine], **extract_options)
    ranks.barrier()
    merged = merge_extraction(path, n, chunk_size, ranks.world_size) if ranks.rank == 0 else None
    ranks.barrier()
    return merged


def merge_extraction(path: str | os.PathLike, n: int, chunk_size: int, world_size: int) -> Activations:
    """Merge the rank files of an extraction of ``n`` conversations into ``path`` (rows in conversation order,
    ``conversation`` indices global again) and return the result."""
    parts = []
    for r in range(world_size):
        rk = Ranks(r, world_size)
        mine = rank_chunks(n, chunk_size, rk)
        if not mine:
            continue
        part = Activations.load(shard_path(path, rk))
        convs = [it.get("conversation") for it in part.items]
        if any(not isinstance(c, int) or not 0 <= c < len(mine) for c in convs):
            raise InvalidInputError(f"{shard_path(path, rk)} does not belong to this run ({len(mine)} conversations "
                                    f"expected); delete the rank files to start over")
        parts.append((part, [mine[c] for c in convs]))
    first = parts[0][0]
    for part, _ in parts[1:]:
        first.model.check_compatible(part.model, what="rank files to merge")
        if part.layers != first.layers or part.reduction != first.reduction:
            raise InvalidInputError("rank files were extracted with other layers or reduction; delete them and rerun")
    # rows sorted by global conversation index; rows of one conversation keep their order (stable sort)
    rows = [(g, p, j) for p, (part, glob) in enumerate(parts) for j, g in enumerate(glob)]
    rows.sort(key=lambda t: t[0])
    values = torch.stack([parts[p][0].values[j] for _, p, j in rows]) if rows else first.values[:0]
    items = [{**parts[p][0].items[j], "conversation": g} for g, p, j in rows]
    merged = Activations(values=values, layers=first.layers, items=items, model=first.model,
                         reduction=first.reduction,
                         extra={"distributed_world_size": str(world_size), "distributed_chunk_size": str(chunk_size)})
    merged.save(path)
    return merged


def rollouts_distributed(
    model: Any,
    requests: Sequence[RolloutRequest],
    store: str | os.PathLike,
    sampling: SamplingConfig | None = None,
    *,
    ranks: Ranks | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> RolloutStore | None:
    """Run this rank's share of ``requests`` (``i % world_size == rank``) into its own store, then (rank 0) append
    every shard's records to ``store`` in request order. Returns the main store on rank 0, None elsewhere.
    ``model``: anything :func:`~persona_axes.runs.rollouts.run_rollouts` takes (a loaded model or any Engine)."""
    ranks = init_ranks() if ranks is None else ranks
    requests = list(requests)
    main_store = RolloutStore(store)
    mine = [r for i, r in enumerate(requests) if i % ranks.world_size == ranks.rank and r.id not in main_store]
    if mine:
        run_rollouts(model, mine, shard_path(store, ranks), sampling, batch_size=batch_size, progress=progress)
    ranks.barrier()
    out = None
    if ranks.rank == 0:
        shards = [RolloutStore(shard_path(store, Ranks(r, ranks.world_size))) for r in range(ranks.world_size)]
        with main_store.writing():
            found = {rec.id: rec for s in shards for rec in s}
            main_store.append([found[r.id] for r in requests if r.id in found and r.id not in main_store])
        out = main_store
    ranks.barrier()
    return out


def replica_max_memory(local_rank: int, gpus_per_replica: int, per_gpu: str | None = None) -> dict[Any, str]:
    """accelerate's ``max_memory`` that confines local rank ``r``'s replica to GPUs ``r*G .. r*G+G-1`` (pass it to
    ``load_model(..., device_map="auto", max_memory=...)``). ``per_gpu``: e.g. ``"70GiB"`` (default: each GPU's
    total memory)."""
    check_int(local_rank, "local_rank", minimum=0)
    g = check_int(gpus_per_replica, "gpus_per_replica", minimum=1)
    n = torch.cuda.device_count()
    if (local_rank + 1) * g > n:
        raise InvalidInputError(f"local rank {local_rank} with {g} GPUs per replica needs GPUs {local_rank * g}.."
                                f"{(local_rank + 1) * g - 1}, but this node has {n}")
    def cap(i: int) -> str:
        return per_gpu or f"{torch.cuda.get_device_properties(i).total_memory // 2**20}MiB"
    return {i: (cap(i) if local_rank * g <= i < (local_rank + 1) * g else "0GiB") for i in range(n)}


# ---- command line (every rank runs it)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m persona_axes.runs.distributed",
                                description="Data-parallel rollouts and extraction; run under torchrun.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("extract", "rollouts"):
        s = sub.add_parser(name)
        s.add_argument("--model", default=None, help="model name or folder (default: the embedded SmolLM2)")
        s.add_argument("--store", required=True, help="the rollout store (JSONL)")
        s.add_argument("--batch-size", type=int, default=16)
        s.add_argument("--dtype", default=None)
        s.add_argument("--gpus-per-replica", type=int, default=0,
                       help="split each replica over this many GPUs with accelerate (0: one device per replica)")
    e = sub.choices["extract"]
    e.add_argument("--out", required=True, help="the .safetensors file to write")
    e.add_argument("--kind", default=None, help="only records of this kind (role, default, trait)")
    e.add_argument("--layers", default=None, help="layer spec, e.g. '10,12' or '8:16' (default: all)")
    e.add_argument("--which", default="last_assistant")
    e.add_argument("--reduce", default="mean")
    e.add_argument("--chunk-size", type=int, default=64)
    r = sub.choices["rollouts"]
    r.add_argument("--preset", default="smoke", help="rollout preset (smoke, quick, paper)")
    r.add_argument("--seed", type=int, default=0)
    return p


def _load(args: argparse.Namespace, ranks: Ranks) -> Any:
    from persona_axes.model.load import load_model

    if args.gpus_per_replica:
        return load_model(args.model, dtype=args.dtype, device_map="auto",
                          max_memory=replica_max_memory(ranks.local_rank, args.gpus_per_replica))
    device = f"cuda:{ranks.local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    return load_model(args.model, dtype=args.dtype, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ranks = init_ranks()
    model = _load(args, ranks)
    if args.command == "extract":
        from persona_axes.core import parse_layer_spec

        recs = RolloutStore(args.store).records(args.kind)
        if not recs:
            raise InvalidInputError(f"{args.store} holds no records" + (f" of kind {args.kind!r}" if args.kind else ""))
        layers = None if args.layers is None else parse_layer_spec(args.layers, model.info.n_layers)
        acts = extract_distributed(model, [r.messages() for r in recs], args.out, ranks=ranks,
                                   metadata=[r.item_metadata() for r in recs], chunk_size=args.chunk_size,
                                   batch_size=args.batch_size, layers=layers, which=args.which, reduce=args.reduce)
        if acts is not None:
            print(f"wrote {args.out}: {len(acts)} items x {len(acts.layers)} layers from {ranks.world_size} rank(s)")
    else:
        from persona_axes.runs.presets import get_preset

        preset = get_preset(args.preset)
        for group, sampling in preset.sampling_groups(preset.build_requests(), args.seed):
            store = rollouts_distributed(model, group, args.store, sampling, ranks=ranks,
                                         batch_size=args.batch_size)
        if store is not None:
            print(f"{args.store}: {len(store)} rollouts from {ranks.world_size} rank(s)")
    ranks.barrier()
    if ranks.world_size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
