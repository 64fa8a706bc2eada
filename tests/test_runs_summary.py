"""The typed run summary: the shipped summary.json round-trips key for key, the checksum refuses any change (every
single-bit flip and truncation: refused with a FileFormatError naming the file, or identical content), legacy
files load with a warning, malformed values are refused by key."""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path

import pytest

from persona_axes.errors import FileFormatError
from persona_axes.runs.summary import SUMMARY_CHECKSUM_KEY, CappingSummary, RunSummary, TraitSummary

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "vectors" / "smollm2-135m-instruct" / "summary.json"


def shipped_dict() -> dict:
    d = json.loads(SHIPPED.read_text())
    d.pop(SUMMARY_CHECKSUM_KEY, None)
    return d


def load_quiet(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RunSummary.load(path)


def test_shipped_summary_is_typed_and_round_trips_key_for_key():
    s = load_quiet(SHIPPED)
    d = shipped_dict()
    assert isinstance(s.capping, CappingSummary) and all(isinstance(t, TraitSummary) for t in s.traits.values())
    assert s.best_layer == d["best_layer"] and s.capping.layers == d["capping"]["layers"]
    assert s.role_acceptance["pirate"].total == d["role_acceptance"]["pirate"]["total"]
    out = s.to_dict()
    defaults = {"empty_replies_left_out": [], "layer_sweep_evaluated_on": "in-sample", "heldout": {}}
    assert out == {**defaults, **d}
    assert list(out)[:4] == ["model", "preset", "judge", "n_rollouts"]
    # the dict view readers used before
    assert s["best_layer"] == d["best_layer"] and s["capping"] == d["capping"] and s["traits"] == d["traits"]
    assert s.get("nope", 3) == 3
    with pytest.raises(KeyError):
        s["nope"]


def test_save_stamps_a_checksum_and_load_checks_it(tmp_path):
    s = load_quiet(SHIPPED)
    p = s.save(tmp_path / "summary.json")
    raw = json.loads(p.read_text())
    assert len(raw[SUMMARY_CHECKSUM_KEY]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stamped file loads without a warning
        assert RunSummary.load(p) == s
    raw["best_layer"] = raw["best_layer"] + 1
    p.write_text(json.dumps(raw, indent=1))
    with pytest.raises(FileFormatError, match=f"{p}.*fails its checksum"):
        RunSummary.load(p)


def test_legacy_summary_loads_with_a_warning_naming_the_file(tmp_path):
    p = tmp_path / "summary.json"
    shutil.copy(SHIPPED, p)
    d = json.loads(p.read_text())
    d.pop(SUMMARY_CHECKSUM_KEY, None)
    p.write_text(json.dumps(d, indent=1))
    with pytest.warns(UserWarning, match=f"{p}.*no checksum.*save"):
        RunSummary.load(p)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(best_layer="20"), "best_layer must be int"),
    (lambda d: d.update(best_layer=99), "best_layer 99"),
    (lambda d: d.pop("judge"), r"lacks key\(s\) \['judge'\]"),
    (lambda d: d.update(surprise=1), r"unknown key\(s\) \['surprise'\]"),
    (lambda d: d["capping"].update(layers=["17"]), "capping.layers must be integers"),
    (lambda d: d["traits"]["evil"].pop("n_pos"), "traits.evil must have keys"),
    (lambda d: d["traits"]["evil"].update(judge_filtered="no"), "judge_filtered must be true or false"),
    (lambda d: d["pc1_cosine_by_layer"].__setitem__(3, "x"), r"pc1_cosine_by_layer\[3\] must be float"),
    (lambda d: d.update(role_acceptance=[]), "role_acceptance must be dict"),
])
def test_malformed_values_are_refused_by_key(tmp_path, edit, match):
    d = shipped_dict()
    edit(d)
    p = tmp_path / "summary.json"
    p.write_text(json.dumps(d))
    with pytest.raises(FileFormatError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        RunSummary.load(p)


def test_not_json_or_missing_is_refused(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        RunSummary.load(tmp_path / "nope.json")
    (tmp_path / "s.json").write_text("[1, 2]")
    with pytest.raises(FileFormatError, match="must be a JSON object"):
        RunSummary.load(tmp_path / "s.json")


def test_fuzz_bit_flips_and_truncations(tmp_path):
    """Seeded single-bit flips (spread over the whole file: keys, values, structure) and truncations of a stamped
    summary: every one is refused with a FileFormatError naming the file, or loads identical content."""
    good = load_quiet(SHIPPED)
    src = good.save(tmp_path / "good.json").read_bytes()
    rng = random.Random(16)
    p = tmp_path / "summary.json"
    outcomes = {"refused": 0, "identical": 0}
    cases = [("flip", rng.randrange(len(src)), rng.randrange(8)) for _ in range(300)]
    cases += [("cut", rng.randrange(len(src)), 0) for _ in range(60)]
    for how, pos, bit in cases:
        blob = bytearray(src)
        if how == "flip":
            blob[pos] ^= 1 << bit
        else:
            del blob[pos:]
        p.write_bytes(bytes(blob))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = RunSummary.load(p)
        except FileFormatError as e:
            assert str(p) in str(e)
            outcomes["refused"] += 1
            continue
        assert got == good, f"{how} at byte {pos} bit {bit} loaded changed content"
        outcomes["identical"] += 1
    assert outcomes["refused"] >= 330  # almost all change the content; none loaded changed (asserted above)
