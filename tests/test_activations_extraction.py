"""Resumable extraction: chunked checkpoints, resume after an interruption or a SIGKILL (same result, no finished
conversation computed again), fingerprints that refuse another run's checkpoint, damaged checkpoints refused,
relabelling without recomputing, the writer lock."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import persona_axes as pa
from persona_axes.activations import extraction as X
from persona_axes.errors import FileFormatError, InvalidInputError, StaleCheckpointError
from helpers import conversations, sigkill_when

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
REAL_CAPTURE = X.capture


class Interrupted(Exception):
    """Stands for a crash half-way through a run."""


class CountingCapture:
    """Wraps the capture used by extraction; records the conversations (by first user message) it computed and
    can fail after ``fail_after`` chunks, like a crash half-way."""

    def __init__(self, monkeypatch, fail_after: int | None = None):
        self.chunks: list[int] = []  # conversations per call
        self.seen: list[str] = []
        self.fail_after = fail_after
        monkeypatch.setattr(X, "capture", self)

    def __call__(self, be, convs, **kw):
        if self.fail_after is not None and len(self.chunks) >= self.fail_after:
            raise Interrupted("simulated crash")
        self.chunks.append(len(convs))
        return REAL_CAPTURE(be, convs, **kw)


def crash_after(monkeypatch, chunks: int, *args, **kw) -> None:
    """Run ``pa.extract(*args, **kw)`` until it crashes after ``chunks`` chunks; then restore the real capture."""
    CountingCapture(monkeypatch, fail_after=chunks)
    with pytest.raises(Interrupted):
        pa.extract(*args, **kw)
    monkeypatch.setattr(X, "capture", REAL_CAPTURE)


def labels(n):
    return [{"label": f"c{i}"} for i in range(n)]


def test_extract_equals_capture_and_writes_one_file(tiny, tmp_path):
    convs = conversations(9)
    out = tmp_path / "acts.safetensors"
    res = pa.extract(tiny, convs, out, layers=[1, 3], metadata=labels(9), chunk_size=100, progress=False)
    ref = pa.capture(tiny, convs, layers=[1, 3], metadata=labels(9), progress=False)
    assert torch.equal(res.activations.values, ref.values)  # one chunk = the very same batches as capture
    assert res.activations.items == ref.items and res.computed == list(range(9)) and res.reused == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts.safetensors"]  # no checkpoint folder left
    back = pa.Activations.load(out, model=tiny)
    assert torch.equal(back.values, ref.values) and back.items == ref.items
    # in chunks of 2: other batch compositions, so equal up to float32 rounding of the matmuls (not bit-exact)
    small = pa.extract(tiny, convs, tmp_path / "b.safetensors", layers=[1, 3], chunk_size=2, progress=False)
    assert torch.allclose(small.activations.values, ref.values, atol=1e-6, rtol=0)


@pytest.mark.parametrize("reduce", ["mean", "all"])
def test_interrupted_run_resumes_without_redoing_finished_chunks(tiny, tmp_path, monkeypatch, reduce):
    convs = conversations(8)
    kw = dict(layers=[0, 2], reduce=reduce, chunk_size=3, batch_size=2, progress=False)
    ref = pa.extract(tiny, convs, tmp_path / "ref.safetensors", metadata=labels(8), **kw)
    out = tmp_path / "acts.safetensors"
    CountingCapture(monkeypatch, fail_after=2)
    with pytest.raises(Interrupted):
        pa.extract(tiny, convs, out, metadata=labels(8), **kw)
    assert not out.exists()
    assert sorted(p.name for p in X.partial_dir(out).glob("chunk-*")) == [
        "chunk-00000000-00000003.safetensors", "chunk-00000003-00000006.safetensors"]
    counter = CountingCapture(monkeypatch)
    res = pa.extract(tiny, convs, out, metadata=labels(8), **kw)
    assert res.computed == [6, 7] and res.reused == 6
    assert counter.chunks == [2]  # only conversations 6 and 7 ran through the model
    assert torch.equal(res.activations.values, ref.activations.values)  # same chunks, same batches: bit-exact
    assert res.activations.items == ref.activations.items
    assert not X.partial_dir(out).exists()
    # done: a third call loads the file and computes nothing
    counter = CountingCapture(monkeypatch)
    again = pa.extract(tiny, convs, out, metadata=labels(8), **kw)
    assert counter.chunks == [] and again.computed == [] and again.reused == 8
    assert torch.equal(again.activations.values, ref.activations.values)


def test_resume_with_another_chunk_size_fills_the_gaps(tiny, tmp_path, monkeypatch):
    convs = conversations(10)
    out = tmp_path / "a.safetensors"
    CountingCapture(monkeypatch, fail_after=1)
    with pytest.raises(Interrupted):
        pa.extract(tiny, convs, out, chunk_size=4, progress=False)
    counter = CountingCapture(monkeypatch)
    res = pa.extract(tiny, convs, out, chunk_size=5, progress=False)
    assert res.computed == list(range(4, 10)) and counter.chunks == [5, 1]
    ref = pa.capture(tiny, convs, progress=False)
    assert torch.allclose(res.activations.values, ref.values, atol=1e-6, rtol=0)


def test_new_labels_relabel_without_recomputing(tiny, tmp_path, monkeypatch):
    convs = conversations(4)
    out = tmp_path / "a.safetensors"
    first = pa.extract(tiny, convs, out, metadata=labels(4), progress=False)
    counter = CountingCapture(monkeypatch)
    new = [{"label": f"c{i}", "score": i} for i in range(4)]
    res = pa.extract(tiny, convs, out, metadata=new, progress=False)
    assert counter.chunks == [] and res.reused == 4
    assert [it["score"] for it in res.activations.items] == [0, 1, 2, 3]
    assert [it["score"] for it in pa.Activations.load(out).items] == [0, 1, 2, 3]  # written back
    assert torch.equal(res.activations.values, first.activations.values)


def test_other_inputs_replace_a_finished_file(tiny, tmp_path, monkeypatch):
    out = tmp_path / "a.safetensors"
    pa.extract(tiny, conversations(4), out, progress=False)
    counter = CountingCapture(monkeypatch)
    res = pa.extract(tiny, conversations(5), out, progress=False)  # an output file is replaced, like any output
    assert counter.chunks == [5] and len(pa.Activations.load(out)) == 5 and res.reused == 0


@pytest.mark.parametrize("change, named", [
    ({"layers": [0, 1]}, "layers [0, 1] there, [2] here"),
    ({"reduce": "last"}, "reduce 'last' there, 'mean' here"),
    ({"which": "user"}, "which 'user' there, 'last_assistant' here"),
    ({"convs": 1}, "the conversations' tokens differ"),
])
def test_checkpoint_of_another_run_is_refused(tiny, tmp_path, monkeypatch, change, named):
    convs = conversations(6)
    out = tmp_path / "a.safetensors"
    first = dict(layers=change.get("layers", [2]), reduce=change.get("reduce", "mean"),
                 which=change.get("which", "last_assistant"))
    CountingCapture(monkeypatch, fail_after=1)
    with pytest.raises(Interrupted):
        old = [list(c) for c in convs]
        if "convs" in change:
            old[0] = old[0][:-1] + [{"role": "assistant", "content": "Something else entirely."}]
        pa.extract(tiny, old, out, chunk_size=2, progress=False, **first)
    monkeypatch.setattr(X, "capture", REAL_CAPTURE)
    with pytest.raises(StaleCheckpointError, match=re.escape(named)) as e:
        pa.extract(tiny, convs, out, layers=[2], chunk_size=2, progress=False)
    assert "restart" in str(e.value) and str(X.partial_dir(out)) in str(e.value)
    res = pa.extract(tiny, convs, out, layers=[2], chunk_size=2, progress=False, restart=True)
    assert res.computed == list(range(6))
    assert torch.allclose(res.activations.values, pa.capture(tiny, convs, layers=[2], progress=False).values,
                          atol=1e-6, rtol=0)


def test_checkpoint_of_another_model_is_refused(tiny, tmp_path, monkeypatch):
    convs = conversations(4)
    out = tmp_path / "a.safetensors"
    crash_after(monkeypatch, 1, tiny, convs, out, chunk_size=2, progress=False)
    renamed = pa.LoadedModel(model=tiny.model, tokenizer=tiny.tokenizer, name="other-model", layers=tiny.layers)
    with pytest.raises(StaleCheckpointError, match="another model.*other-model"):
        pa.extract(renamed, convs, out, chunk_size=2, progress=False)


def test_damaged_checkpoint_is_refused_never_loaded(tiny, tmp_path, monkeypatch):
    convs = conversations(6)
    out = tmp_path / "a.safetensors"
    crash_after(monkeypatch, 2, tiny, convs, out, chunk_size=2, progress=False)
    chunk = sorted(X.partial_dir(out).glob("chunk-*"))[1]
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) - 100])  # truncated
    with pytest.raises(FileFormatError, match=f"checkpoint {re.escape(str(chunk))}.*unreadable.*truncated"):
        pa.extract(tiny, convs, out, chunk_size=2, progress=False)
    # a leftover temporary file of an interrupted atomic write is not a checkpoint and is ignored
    chunk.unlink()
    (X.partial_dir(out) / f".{chunk.name}.abc123.tmp").write_bytes(b"half a file")
    res = pa.extract(tiny, convs, out, chunk_size=2, progress=False)
    assert res.computed == [2, 3, 4, 5] and not X.partial_dir(out).exists()


def test_damaged_finished_file_is_recomputed_not_loaded(tiny, tmp_path, monkeypatch):
    convs = conversations(3)
    out = tmp_path / "a.safetensors"
    good = pa.extract(tiny, convs, out, progress=False)
    out.write_bytes(out.read_bytes()[:-50])
    res = pa.extract(tiny, convs, out, progress=False)
    assert res.computed == [0, 1, 2] and torch.equal(res.activations.values, good.activations.values)


def test_leftover_checkpoint_after_the_file_was_written_is_cleaned(tiny, tmp_path):
    convs = conversations(3)
    out = tmp_path / "a.safetensors"
    pa.extract(tiny, convs, out, progress=False)
    X.partial_dir(out).mkdir()  # killed between writing the file and deleting the folder
    (X.partial_dir(out) / "chunk-00000000-00000003.safetensors").write_bytes(b"x")
    res = pa.extract(tiny, convs, out, progress=False)
    assert res.computed == [] and not X.partial_dir(out).exists()


def test_second_writer_is_refused(tiny, tmp_path):
    from filelock import FileLock

    out = tmp_path / "a.safetensors"
    X.partial_dir(out).mkdir()
    with FileLock(str(X.partial_dir(out) / ".lock")):
        with pytest.raises(InvalidInputError, match="another process is extracting into"):
            pa.extract(tiny, conversations(2), out, progress=False)


def test_bad_arguments(tiny, tmp_path):
    with pytest.raises(InvalidInputError, match="chunk_size must be a positive integer"):
        pa.extract(tiny, conversations(2), tmp_path / "a.safetensors", chunk_size=0)
    with pytest.raises(InvalidInputError, match="is a folder"):
        pa.extract(tiny, conversations(2), tmp_path)
    with pytest.raises(InvalidInputError, match="1 metadata dicts for 2 conversations"):
        pa.extract(tiny, conversations(2), tmp_path / "a.safetensors", metadata=[{}])


# The killed process computes with as many threads as this one: CPU matmuls split their sums by thread count, so
# chunks made with another count can differ from this process's in the last bit (about 1e-9 here).
SAME_THREADS = {"OMP_NUM_THREADS": str(torch.get_num_threads()), "MKL_NUM_THREADS": str(torch.get_num_threads())}

KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from helpers import conversations, slow_down, tiny_loaded
from persona_axes.activations import extraction as X

loaded = tiny_loaded()
slow_down(X, "capture", 0.3)
print("start", flush=True)
X.extract(loaded, conversations({n}), {path!r}, layers=[1, 3], chunk_size={chunk}, batch_size=3, progress=False)
print("done", flush=True)
"""


def test_sigkill_then_resume(tiny, tmp_path, monkeypatch):
    """SIGKILL a real extraction process after a few checkpoints, resume it here: the result equals an
    uninterrupted run bit for bit, and no conversation of a finished chunk went through the model again."""
    n, chunk = 24, 3
    out = tmp_path / "killed.safetensors"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT.format(tests=str(TESTS), path=str(out), n=n, chunk=chunk)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), **SAME_THREADS}
    partial = X.partial_dir(out)
    sigkill_when([sys.executable, str(script)], lambda: len(list(partial.glob("chunk-*.safetensors"))) >= 3, env=env)
    assert not out.exists()
    finished = set()
    for p in partial.glob("chunk-*.safetensors"):
        a, b = (int(x) for x in p.stem.split("-")[1:])
        finished.update(range(a, b))
    assert 3 * chunk <= len(finished) < n

    seen: list[int] = []
    real = X.capture

    def counting(be, convs, **kw):
        seen.append(len(convs))
        return real(be, convs, **kw)

    monkeypatch.setattr(X, "capture", counting)
    convs = conversations(n)
    res = X.extract(tiny, convs, out, layers=[1, 3], chunk_size=chunk, batch_size=3, progress=False)
    assert set(res.computed) == set(range(n)) - finished, "a finished conversation was computed again"
    assert res.reused == len(finished) and sum(seen) == n - len(finished)
    assert not partial.exists()

    monkeypatch.setattr(X, "capture", real)
    ref = X.extract(tiny, convs, tmp_path / "ref.safetensors", layers=[1, 3], chunk_size=chunk, batch_size=3,
                    progress=False)
    assert torch.equal(res.activations.values, ref.activations.values)
    assert res.activations.items == ref.activations.items
    assert torch.equal(pa.Activations.load(out).values, ref.activations.values)


CLI_KILL_SCRIPT = """
import sys
from helpers import slow_down
from persona_axes.activations import extraction as X
from persona_axes.cli.main import main
slow_down(X, "capture", 0.3)
sys.exit(main(sys.argv[1:]))
"""


def test_cli_extract_killed_then_resumed(tiny, tmp_path, capsys):
    """The same through the command line: SIGKILL `persona-axes extract` after a few checkpoints, run it again,
    and get what an uninterrupted run writes, with the finished rollouts reported as reused."""
    from persona_axes.runs import rollouts as R
    from persona_axes.cli.main import main

    model_dir = tmp_path / "tiny-llama"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    runs = tmp_path / "runs"
    reqs = R.default_requests(pa.load_default_prompts()[:4], pa.load_questions()[:6])  # 24 rollouts
    R.run_rollouts(tiny, reqs, runs / "rollouts.jsonl", pa.SamplingConfig(max_new_tokens=4), progress=False)
    out = tmp_path / "acts.safetensors"
    argv = ["extract", "--model", str(model_dir), "--rollouts", str(runs), "--layers", "1:3", "--chunk-size", "3",
            "--batch-size", "2", "--quiet"]
    script = tmp_path / "cli.py"
    script.write_text(CLI_KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), **SAME_THREADS}
    partial = X.partial_dir(out)
    sigkill_when([sys.executable, str(script), *argv, "--out", str(out)],
                 lambda: len(list(partial.glob("chunk-*.safetensors"))) >= 2, env=env)
    assert not out.exists()
    n_done = 3 * len(list(partial.glob("chunk-*.safetensors")))
    assert 6 <= n_done < 24

    assert main([*argv, "--out", str(out)]) == 0
    resumed = capsys.readouterr().out
    assert f"({24 - n_done} computed now, {n_done} reused from an earlier run)" in resumed
    assert not partial.exists()
    assert main([*argv, "--out", str(tmp_path / "ref.safetensors")]) == 0
    assert "(24 computed now, 0 reused" in capsys.readouterr().out
    got, want = pa.Activations.load(out), pa.Activations.load(tmp_path / "ref.safetensors")
    assert torch.equal(got.values, want.values) and got.items == want.items and got.layers == (1, 2)
    assert main([*argv, "--out", str(out)]) == 0  # finished: nothing to compute
    assert "(0 computed now, 24 reused" in capsys.readouterr().out
