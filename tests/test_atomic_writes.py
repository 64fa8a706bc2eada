"""Every file write is atomic: a scan of the package for direct writes (each one left is listed here with the
reason it is safe), and what a failed write leaves behind (the old file, whole, and no temporary file)."""

from __future__ import annotations

import ast
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

import persona_axes as pa
from persona_axes import files as IO

PACKAGE = Path(pa.__file__).resolve().parent

#: Calls that write a file by themselves (rather than into a file object from ``atomic_write``).
PRIMITIVES = {"write_text", "write_bytes", "copy", "copyfile", "copy2", "copytree", "move", "savez",
              "savez_compressed", "save_file", "save_pretrained", "to_csv", "write_html", "write_image", "tofile",
              "GGUFWriter"}

#: The direct writes that remain, each safe for the reason given.
ALLOWED = Counter({
    ("formats.py", "open rb+"): 1,  # fsyncs the temporary file of _atomic_path before it is renamed into place
    ("formats.py", "GGUFWriter"): 2,  # writes the temporary path given by _atomic_path
    ("formats.py", "savez"): 1,  # into the file object opened by atomic_write
    ("load.py", "save_pretrained"): 2,  # into a temporary folder, renamed into place once the manifest is in
    ("rollouts.py", "open ab"): 1,  # the append-only rollout log: a torn last line is dropped when read
})


def _direct_writes() -> Counter:
    found: Counter = Counter()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name == "open":
                mode = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "mode"), None)
                text = mode.value if isinstance(mode, ast.Constant) else "r" if mode is None else "<dynamic>"
                if set(str(text)) & set("wax+<"):
                    found[(path.name, f"open {text}")] += 1
            elif name in PRIMITIVES and not (name == "copy" and isinstance(f, ast.Attribute)
                                             and not (isinstance(f.value, ast.Name) and f.value.id == "shutil")):
                found[(path.name, name)] += 1
    return found


def test_no_direct_file_writes_outside_the_allowed_list():
    found = _direct_writes()
    new = found - ALLOWED
    assert not new, f"direct (non-atomic) file writes: {dict(new)}; write through persona_axes.files.atomic_write"
    assert found == ALLOWED, f"the allowed list is stale: {dict(ALLOWED - found)} no longer occur"


def test_failed_write_keeps_the_old_file_whole(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with IO.atomic_write(p, "w") as f:
            f.write("new, half")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_failed_rename_keeps_the_old_tensor_file_loadable(tmp_path, monkeypatch):
    info = pa.ModelInfo("m", 2, 4)
    p = pa.PersonaVector(torch.ones(2, 4), info, "v", "m").save(tmp_path / "v.safetensors")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(IO.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        pa.PersonaVector(torch.zeros(2, 4), info, "v", "m").save(p)
    monkeypatch.undo()
    assert torch.equal(pa.PersonaVector.load(p).vector, torch.ones(2, 4))
    assert os.listdir(tmp_path) == ["v.safetensors"]  # the temporary file is gone too
