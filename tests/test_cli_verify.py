"""``persona-axes verify`` (cli/verify.py): intact, damaged and legacy files, folders, and --restamp."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import persona_axes as pa
from persona_axes import files
from persona_axes.cli.main import main
from persona_axes.export import export_vector

INFO = pa.ModelInfo("synthetic", 4, 8)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "run"
    v = pa.PersonaVector(torch.randn(4, 8), INFO, "v", "mean_diff")
    v.save(d / "v.safetensors")
    pa.VectorSet.from_vectors([v]).save(d / "sub" / "set.safetensors")
    export_vector(v, d / "v.gguf", "gguf")
    export_vector(v, d / "v.npz", "numpy")
    (d / "notes.txt").write_text("not checked: not a file kind we write")
    return d, v


def test_verify_folder_all_ok(capsys, folder):
    d, _ = folder
    rc, out, err = run(capsys, "verify", d)
    assert rc == 0, err
    assert out.count("\nok ") + out.startswith("ok ") == 4 and "4 ok" in out


def test_verify_damaged_file_fails(capsys, folder):
    d, _ = folder
    p = d / "v.safetensors"
    blob = bytearray(p.read_bytes())
    blob[-3] ^= 0x10
    p.write_bytes(bytes(blob))
    rc, out, err = run(capsys, "verify", d)
    assert rc == 1
    assert f"FAILED    {p}" in err and "checksum" in err
    assert "3 ok" in out


def test_verify_restamps_legacy_files(capsys, tmp_path):
    v = pa.PersonaVector(torch.randn(4, 8), INFO, "v", "mean_diff")
    p = v.save(tmp_path / "v.safetensors")
    md = {k: val for k, val in files.read_safetensors_metadata(p).items() if k != "sha256"}
    p.write_bytes(st_save(st_load(p.read_bytes()), metadata={**md, "format_version": "1"}))
    rc, out, _ = run(capsys, "verify", p)
    assert rc == 0 and out.startswith("legacy") and f"verify --restamp {p}" in out
    rc, out, _ = run(capsys, "verify", "--restamp", p)
    assert rc == 0 and out.startswith("restamped")
    rc, out, _ = run(capsys, "verify", p)
    assert rc == 0 and out.startswith("ok")
    assert torch.equal(pa.PersonaVector.load(p).vector, v.vector)


def test_verify_missing_path(capsys, tmp_path):
    rc, _, err = run(capsys, "verify", tmp_path / "nope")
    assert rc == 2 and "no such file or folder" in err


def test_verify_run_summary_and_rollout_store(capsys, tmp_path):
    """A run folder's summary.json and rollouts.jsonl: ok; a line without its check is legacy until --restamp; a
    changed line FAILS with its line number."""
    import json
    import shutil

    from test_fuzz_files import SHIPPED, _store

    from persona_axes.runs.store import LINE_CHECK_KEY

    store = _store(tmp_path)
    shutil.copy(SHIPPED / "summary.json", tmp_path / "summary.json")
    rc, out, err = run(capsys, "verify", tmp_path)
    assert rc == 0 and "2 ok" in out, out + err
    lines = store.read_text().splitlines()
    first = json.loads(lines[0])
    del first[LINE_CHECK_KEY]
    store.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    rc, out, _ = run(capsys, "verify", store)
    assert rc == 0 and out.startswith("legacy")
    rc, out, _ = run(capsys, "verify", "--restamp", store)
    assert rc == 0 and out.startswith("restamped")
    lines = store.read_text().splitlines()
    store.write_text("\n".join([lines[0], lines[1].replace("Reply 1", "Reply 9"), *lines[2:]]) + "\n")
    rc, _, err = run(capsys, "verify", store)
    assert rc == 1 and "line 2" in err
