"""The rollout store: round trip, per-line checks, the torn last line, corrupt lines refused with their number,
legacy lines, NaN scores, and single-bit flips and truncations (fuzz)."""

from __future__ import annotations

import json
import math
import random
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




# ----------------------------------------------------------------------------------------------------------------
# Per-line checks
# ----------------------------------------------------------------------------------------------------------------


def write_store(path, n=6):
    recs = [make_record(r, f"reply {i}: caf\u00e9 \u263a") for i, r in enumerate(small_requests()[:n])]
    S.RolloutStore(path).append(recs)
    return recs


def test_every_line_carries_a_check_of_its_record(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = write_store(path)
    for line, rec in zip(path.read_text().splitlines(), recs):
        d = json.loads(line)
        check = d.pop(S.LINE_CHECK_KEY)
        assert check == S.line_check(d) and len(check) == 16
        assert S.Rollout.from_dict(d) == rec


def test_a_changed_line_is_refused_with_file_and_line_number(tmp_path):
    path = tmp_path / "r.jsonl"
    write_store(path)
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("reply 3", "reply 9")  # still valid JSON and a valid record: only the check sees it
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FileFormatError, match=f"{path}, line 4: fails its check"):
        S.RolloutStore(path)
    # the last line too, when it has its newline (a kill cannot have written a whole line without it)
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("reply 9", "reply 3")
    lines[-1] = lines[-1].replace("reply 5", "reply 7")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FileFormatError, match="line 6: fails its check"):
        S.RolloutStore(path)
    # a whole last line without its newline that fails its check is corrupt, not torn
    path.write_text("\n".join(lines))
    with pytest.raises(FileFormatError, match="line 6: fails its check"):
        S.RolloutStore(path)


def test_legacy_lines_without_checks_load_with_a_warning_and_restamp(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = write_store(path)
    stripped = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        d.pop(S.LINE_CHECK_KEY)
        stripped.append(json.dumps(d, ensure_ascii=False))
    path.write_text("\n".join(stripped) + "\n")
    with pytest.warns(UserWarning, match=f"{path}: 6 line\\(s\\) carry no per-line check.*restamp"):
        store = S.RolloutStore(path)
    assert store.records() == recs and store.legacy_lines == 6
    assert store.restamp() == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = S.RolloutStore(path)
    assert again.records() == recs and all(S.LINE_CHECK_KEY in json.loads(x) for x in path.read_text().splitlines())


def test_fuzz_bit_flips_and_truncations(tmp_path):
    """Seeded single-bit flips anywhere in a store, and truncations: a flip is refused with a FileFormatError naming
    the file and the line, or loads identical records; a truncation (a kill mid-write, the documented exception)
    loads a prefix of the records, with a warning when it tore a line, and never a changed record."""
    path = tmp_path / "good.jsonl"
    recs = write_store(path)
    S.RolloutStore(path).update_judge("fake/v1", {recs[0].id: {"score": 2, "rationale": "ok", "raw": 0.25},
                                                  recs[-1].id: {"score": float("nan"), "rationale": "-", "raw": None}})
    good = S.RolloutStore(path).records()
    src = path.read_bytes()
    rng = random.Random(16)
    p = tmp_path / "r.jsonl"
    refused = identical = 0
    for _ in range(300):
        blob = bytearray(src)
        pos, bit = rng.randrange(len(src)), rng.randrange(8)
        blob[pos] ^= 1 << bit
        p.write_bytes(bytes(blob))
        line = src[:pos].count(b"\n") + 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a flip is never "dropped with a warning"
                got = S.RolloutStore(p).records()
        except FileFormatError as e:
            assert str(p) in str(e) and f"line {line}:" in str(e), str(e)
            refused += 1
            continue
        assert got == good, f"flip at byte {pos} bit {bit} loaded changed records"
        identical += 1
    assert refused >= 295
    lines = src.split(b"\n")[:-1]
    for _ in range(60):
        cut = rng.randrange(len(src))
        p.write_bytes(src[:cut])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = S.RolloutStore(p).records()
        whole = src[:cut].count(b"\n")
        tail = src[:cut].split(b"\n")[-1]  # the part of line whole + 1 that was written
        complete = bool(tail) and tail == lines[whole]  # cut right before a newline: a whole line
        assert got == good[: whole + complete]  # a prefix, never a changed record
        warned = any("truncated last line" in str(w.message) and str(p) in str(w.message) for w in caught)
        assert warned == (bool(tail) and not complete)


def test_store_path_must_be_a_path(tmp_path):
    with pytest.raises(InvalidInputError, match="must be a str or a path, got int"):
        S.RolloutStore(123)
    with pytest.raises(InvalidInputError, match="is a folder"):
        S.RolloutStore(tmp_path)
