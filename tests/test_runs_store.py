"""The rollout store: round trip, per-line checks, the torn last line, corrupt lines refused with their number,
legacy lines, NaN scores, and single-bit flips and truncations (fuzz)."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.runs import store as S

from test_runs_rollouts import make_record, small_requests


# ----------------------------------------------------------------------------------------------------------------
# Store
# ----------------------------------------------------------------------------------------------------------------


def test_store_round_trip(tmp_path):
    reqs = small_requests()
    path = tmp_path / "sub" / "r.jsonl"
    store = S.RolloutStore(path)
    assert len(store) == 0 and store.completed_ids() == set()
    recs = [make_record(r, f"reply {i} \u00e9\u263a\n\"quoted\"") for i, r in enumerate(reqs)]
    store.append(recs[:5])
    store.append(recs[5:])
    again = S.RolloutStore(path)
    assert again.records() == recs
    assert again.completed_ids() == {r.id for r in reqs}
    assert again.get(reqs[3].id) == recs[3] and again.get("nope") is None
    assert len(path.read_text().splitlines()) == len(reqs)
    assert all(json.loads(line)["id"] for line in path.read_text().splitlines())
    rec = again.get("role/" + reqs[0].name + "/p0/" + reqs[0].question_id + "/s0")
    assert rec.messages() == [{"role": "system", "content": rec.system}, {"role": "user", "content": rec.question},
                              {"role": "assistant", "content": rec.response}]
    d = next(r for r in again.records() if r.kind == "default" and r.system == "")
    assert [m["role"] for m in d.messages()] == ["user", "assistant"]
    assert again.records("trait") == [r for r in recs if r.kind == "trait"]


def test_truncated_last_line_is_dropped_then_repaired(tmp_path):
    reqs = small_requests()
    path = tmp_path / "r.jsonl"
    S.RolloutStore(path).append([make_record(r) for r in reqs[:4]])
    full = path.read_bytes()
    S.RolloutStore(path).append([make_record(reqs[4])])
    path.write_bytes(path.read_bytes()[: len(full) + 37])  # a kill in the middle of writing line 5
    with pytest.warns(UserWarning, match="truncated last line"):
        store = S.RolloutStore(path)
    assert store.completed_ids() == {r.id for r in reqs[:4]}
    store.append([make_record(r) for r in reqs[4:7]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = S.RolloutStore(path)
    assert [r.id for r in again.records()] == [r.id for r in reqs[:7]]
    # a complete last line without its newline is kept, and the next append starts a new line
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    store = S.RolloutStore(path)
    assert len(store) == 7
    store.append([make_record(reqs[7])])
    assert len(S.RolloutStore(path)) == 8


def test_corrupt_middle_line_is_an_error(tmp_path):
    reqs = small_requests()
    path = tmp_path / "r.jsonl"
    S.RolloutStore(path).append([make_record(r) for r in reqs[:3]])
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FileFormatError, match="line 2"):
        S.RolloutStore(path)
    path.write_text('{"hello": 1}\n' + "\n".join(lines[2:]) + "\n")
    with pytest.raises(FileFormatError):
        S.RolloutStore(path)


def test_nan_scores_are_stored_as_null_and_read_back_as_nan(tmp_path):
    req = small_requests()[-1]
    path = tmp_path / "r.jsonl"
    store = S.RolloutStore(path)
    store.append([make_record(req)])
    store.update_judge("none", {req.id: {"score": float("nan"), "rationale": "not judged"}})
    assert "NaN" not in path.read_text() and json.loads(path.read_text())["judge"]["none"]["score"] is None
    assert math.isnan(S.RolloutStore(path).get(req.id).score("none"))
    assert S.RolloutStore(path).get(req.id).score("other") is None
    with pytest.raises(InvalidInputError):
        store.update_judge("none", {"missing/id": {"score": 1}})


