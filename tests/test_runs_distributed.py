"""Data-parallel rollouts and extraction over torchrun ranks: 2 real ranks on the CPU (gloo, loopback only), a rank
killed mid-extraction and resumed, and the result bit-identical to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import tiny_loaded
from persona_axes.activations.container import Activations
from persona_axes.activations.extraction import extract
from persona_axes.errors import InvalidInputError
from persona_axes.runs.distributed import Ranks, rank_chunks, replica_max_memory, rollouts_distributed, shard_path
from persona_axes.runs.requests import RolloutRequest
from persona_axes.runs.rollouts import run_rollouts
from persona_axes.runs.store import RolloutStore
from persona_axes.steering.generation import SamplingConfig

TESTS = Path(__file__).parent
REPO = TESTS.parent


def test_rank_chunks_partition_the_items_by_whole_chunks():
    for n, c, w in [(10, 3, 2), (7, 2, 3), (1, 4, 2), (0, 3, 2), (12, 4, 3)]:
        per_rank = [rank_chunks(n, c, Ranks(r, w)) for r in range(w)]
        assert sorted(i for p in per_rank for i in p) == list(range(n))  # every item exactly once
        for r, items in enumerate(per_rank):  # rank r holds exactly the chunks k with k % w == r
            assert items == [i for i in range(n) if (i // c) % w == r]
    assert shard_path("/x/acts.safetensors", Ranks(1, 4)) == Path("/x/acts.rank1-of-4.safetensors")


@pytest.mark.parametrize("kw, match", [({"rank": 2, "world_size": 2}, "rank must be in 0..1"),
                                       ({"world_size": 0}, "world_size"), ({"local_rank": -1}, "local_rank")])
def test_ranks_checks(kw, match):
    with pytest.raises(InvalidInputError, match=match):
        Ranks(**kw)


def test_replica_max_memory_refuses_too_few_gpus():
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has GPUs; the CPU-only refusal is what is tested here")
    with pytest.raises(InvalidInputError, match="needs GPUs 2..3"):
        replica_max_memory(1, 2)


SCRIPT = r"""
import json, os, signal, sys
sys.path.insert(0, {tests!r})
import torch
from helpers import tiny_loaded, conversations
import persona_axes.activations.extraction as ex
from persona_axes.activations.container import Activations
from persona_axes.runs.distributed import init_ranks, extract_distributed, rollouts_distributed
from persona_axes.runs.requests import RolloutRequest
from persona_axes.runs.store import RolloutStore
from persona_axes.steering.generation import SamplingConfig

out = {out!r}
ranks = init_ranks()
model = tiny_loaded()
reqs = [RolloutRequest("default", "default", p, f"q{{q}}", 0, "Be brief." if p else "", f"Question {{q}}: " + "why? " * q)
        for p in range(2) for q in range(3)]
store = rollouts_distributed(model, reqs, os.path.join(out, "rollouts.jsonl"), SamplingConfig(max_new_tokens=4),
                             ranks=ranks, batch_size=1)
convs = conversations(9)
captured = []
real_capture = ex.capture
def counting_capture(be, rendered, **kw):
    captured.append(len(rendered))
    return real_capture(be, rendered, **kw)
ex.capture = counting_capture
real_save = Activations.save
def save(self, path):
    p = real_save(self, path)
    if os.environ.get("KILL_RANK1") and ranks.rank == 1 and ".partial" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)  # rank 1 dies right after its first finished chunk
    return p
Activations.save = save
extract_distributed(model, convs, os.path.join(out, "acts.safetensors"), ranks=ranks, chunk_size=2, batch_size=2,
                    layers=[1, 3], metadata=[{{"label": i}} for i in range(len(convs))])
with open(os.path.join(out, f"captured-{{ranks.rank}}-{{os.environ.get('KILL_RANK1', '0')}}.json"), "w") as f:
    json.dump(captured, f)
"""


def _torchrun(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        env=env, cwd=str(REPO), capture_output=True, text=True, timeout=300)


def test_torchrun_two_ranks_bit_identical_to_one_process_and_a_killed_rank_resumes(tmp_path):
    from helpers import conversations

    out = tmp_path / "run"
    out.mkdir()
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), out=str(out)))
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    killed = _torchrun(script, {**env, "KILL_RANK1": "1"})
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert not (out / "acts.safetensors").exists()  # the merge never happened
    rollouts_before = (out / "rollouts.jsonl").read_bytes()
    resumed = _torchrun(script, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # rank 1 owns chunks 1 and 3 (conversations 2,3 and 6,7): chunk 1 was finished before the kill, so the rerun
    # computes only chunk 3 on rank 1
    assert json.loads((out / "captured-1-0.json").read_text()) == [2]
    assert sum(json.loads((out / "captured-0-0.json").read_text())) <= 5  # rank 0: chunks 0, 2, 4 at most

    # one process, same chunking and batching (same thread count as each rank)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_loaded()
        convs = conversations(9)
        single = extract(model, convs, tmp_path / "single.safetensors", chunk_size=2, batch_size=2, layers=[1, 3],
                         metadata=[{"label": i} for i in range(9)], progress=False).activations
        reqs = [RolloutRequest("default", "default", p, f"q{q}", 0, "Be brief." if p else "", f"Question {q}: " + "why? " * q)
                for p in range(2) for q in range(3)]
        run_rollouts(model, reqs, tmp_path / "single.jsonl", SamplingConfig(max_new_tokens=4), batch_size=1,
                     progress=False)
    finally:
        torch.set_num_threads(threads)

    merged = Activations.load(out / "acts.safetensors")
    assert torch.equal(merged.values, single.values)  # bit for bit
    assert merged.items == single.items and merged.layers == single.layers == (1, 3)
    assert torch.equal(merged.mean(), single.mean())  # the vectors built from them too
    diff = merged.where(label=1).mean() - merged.where(label=2).mean()
    assert torch.equal(diff, single.where(label=1).mean() - single.where(label=2).mean())

    sharded = RolloutStore(out / "rollouts.jsonl")
    one = RolloutStore(tmp_path / "single.jsonl")
    assert [r.id for r in sharded] == [r.id for r in reqs]  # merged in request order
    assert (out / "rollouts.jsonl").read_bytes() == rollouts_before  # the rerun regenerated and rewrote nothing
    assert {r.id: r.response for r in sharded} == {r.id: r.response for r in one}
    assert (out / "rollouts.rank1-of-2.jsonl").exists() and (out / "acts.rank1-of-2.safetensors").exists()


def test_command_line_extract_in_one_process(tiny_checkpoint, tmp_path, capsys):
    from persona_axes.model.load import load_model
    from persona_axes.runs.distributed import main

    model = load_model(tiny_checkpoint)
    reqs = [RolloutRequest("default", "default", 0, f"q{q}", 0, "", f"Question {q}: " + "why? " * q) for q in range(3)]
    run_rollouts(model, reqs, tmp_path / "r.jsonl", SamplingConfig(max_new_tokens=3), progress=False)
    assert main(["extract", "--model", str(tiny_checkpoint), "--store", str(tmp_path / "r.jsonl"), "--out",
                 str(tmp_path / "a.safetensors"), "--layers", "1,3", "--chunk-size", "2", "--batch-size", "2"]) == 0
    assert "3 items x 2 layers from 1 rank(s)" in capsys.readouterr().out
    acts = Activations.load(tmp_path / "a.safetensors")
    recs = RolloutStore(tmp_path / "r.jsonl").records()
    ref = extract(model, [r.messages() for r in recs], tmp_path / "ref.safetensors", layers=[1, 3], chunk_size=2,
                  batch_size=2, metadata=[r.item_metadata() for r in recs], progress=False).activations
    assert torch.equal(acts.values, ref.values) and acts.items == ref.items


def test_run_rollouts_with_an_hf_engine_matches_the_model_and_resumes(tiny, tmp_path):
    from persona_axes.engines.hf import HFEngine

    reqs = [RolloutRequest("default", "default", 0, f"q{q}", 0, "", f"Question {q}: " + "why? " * q) for q in range(4)]
    sampling = SamplingConfig(max_new_tokens=4, temperature=0.9, seed=4)
    run_rollouts(tiny, reqs, tmp_path / "ref.jsonl", sampling, batch_size=2, progress=False)
    first = run_rollouts(HFEngine(tiny, batch_size=2), reqs[:2], tmp_path / "e.jsonl", sampling, progress=False)
    again = run_rollouts(HFEngine(tiny, batch_size=2), reqs, tmp_path / "e.jsonl", sampling, progress=False)
    assert (first.generated, again.generated, again.skipped) == (2, 2, 2)
    ref, got = RolloutStore(tmp_path / "ref.jsonl"), RolloutStore(tmp_path / "e.jsonl")
    assert {r.id: (r.response, r.item_seed, r.model) for r in got} == {r.id: (r.response, r.item_seed, r.model) for r in ref}
    with pytest.raises(InvalidInputError, match="another run"):
        run_rollouts(HFEngine(tiny, name="other"), reqs, tmp_path / "e.jsonl", sampling, progress=False)
    # the data-parallel path takes an engine too (one process here)
    store = rollouts_distributed(HFEngine(tiny, batch_size=2), reqs, tmp_path / "d.jsonl", sampling, ranks=Ranks())
    assert {r.id: (r.response, r.item_seed, r.model) for r in store} == {r.id: (r.response, r.item_seed, r.model)
                                                                         for r in ref}
