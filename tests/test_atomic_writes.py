"""Every file write is atomic and gets ordinary permissions.

The rule, checked on the source: a call that writes a file (``open`` for writing, ``savez``, ``save_file``,
``GGUFWriter``, ``save_pretrained``, ...) appears only inside :mod:`persona_axes.files`, or inside a
``with atomic_write(...) as f`` / ``with atomic_path(...) as tmp`` block, writing to the name that block bound.
Then: what a failed write leaves behind (the old file, whole, and no temporary file), and the permissions of every
exporter's output (GGUF and repeng exports came out 0600 before the one helper).
"""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import persona_axes as pa
from persona_axes import files as IO

PACKAGE = Path(pa.__file__).resolve().parent

#: Calls that write a file by themselves (rather than into a file object from ``atomic_write``).
PRIMITIVES = {"write_text", "write_bytes", "copy", "copyfile", "copy2", "copytree", "move", "savez",
              "savez_compressed", "save_file", "save_pretrained", "to_csv", "write_html", "write_image", "tofile",
              "GGUFWriter", "save"}
HELPERS = {"atomic_write", "atomic_path"}

#: Writes that do not go through the helpers yet, with the reason they are safe (owners: switch to files.py's
#: helpers — ``append_durably`` for the log — and delete the line). Keyed by package, never by a call count.
DELEGATED = {
    ("model/", "save_pretrained"): "into the temporary folder of the model cache, renamed in place last",
    ("runs/", "open ab"): "the append-only rollout log: a torn last line is dropped when read",
    ("engines/", "open wb"): "a server subprocess's log stream, written while it runs; not a data file",
    ("evals/", "open ab"): "the append-only evaluation result log, the rollout store's rules (torn last line redone)",
}


def _delegated(rel: str, kind: str) -> bool:
    return any(rel.startswith(prefix) and kind == k for prefix, k in DELEGATED)


def _write_kind(node: ast.Call) -> str | None:
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name == "open":
        mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        text = mode.value if isinstance(mode, ast.Constant) else "r" if mode is None else "<dynamic>"
        return f"open {text}" if set(str(text)) & set("wax+<") else None
    if name == "copy" and isinstance(f, ast.Attribute) and not (isinstance(f.value, ast.Name) and f.value.id == "shutil"):
        return None  # tensor.copy_, dict.copy ...
    if name == "save" and not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in ("torch", "np")):
        return None  # our own .save() methods write through save_tensors
    return name if name in PRIMITIVES else None


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _unsafe_writes() -> list[tuple[str, str, int]]:
    """``(module, write, line)`` for every write outside files.py that does not target a helper-bound name."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "files.py":
            continue
        tree = ast.parse(path.read_text())

        def visit(node: ast.AST, bound: frozenset[str]) -> None:
            if isinstance(node, ast.With):
                extra = {item.optional_vars.id for item in node.items
                         if isinstance(item.context_expr, ast.Call) and isinstance(item.optional_vars, ast.Name)
                         and _call_name(item.context_expr) in HELPERS}
                bound = bound | extra
            if isinstance(node, ast.Call):
                kind = _write_kind(node)
                targets = set().union(*(_names(a) for a in [*node.args, *(k.value for k in node.keywords)])) \
                    if (node.args or node.keywords) else set()
                if isinstance(node.func, ast.Attribute):
                    targets |= _names(node.func.value)
                if kind and not (targets & bound) and not _delegated(rel, kind):
                    found.append((rel, kind, node.lineno))
            for child in ast.iter_child_nodes(node):
                visit(child, bound)

        visit(tree, frozenset())
    return found


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def test_every_write_goes_through_the_helpers():
    bad = _unsafe_writes()
    assert not bad, ("direct (non-atomic) file writes; write through persona_axes.files.atomic_write / atomic_path: "
                     + ", ".join(f"{m}:{line} ({k})" for m, k, line in bad))


def test_the_scan_catches_a_direct_write(tmp_path, monkeypatch):
    """The scan itself: a module writing with a bare open(..., 'w'), or to a path other than the one the helper
    bound, is reported; the same write to the helper's path is not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "files.py").write_text("")
    (pkg / "bad.py").write_text("def f(p):\n    with open(p, 'w') as f:\n        f.write('x')\n")
    (pkg / "sneaky.py").write_text("def f(p, q):\n    with atomic_path(p) as tmp:\n        np.savez(q, a=1)\n")
    (pkg / "good.py").write_text("def f(p):\n    with atomic_path(p) as tmp:\n        GGUFWriter(tmp, 'x')\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    assert sorted((m, k) for m, k, _ in _unsafe_writes()) == [("bad.py", "open w"), ("sneaky.py", "savez")]


def test_delegated_writes_still_exist():
    """A stale entry in DELEGATED would let a new direct write in unnoticed: each one must still be there."""
    present = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _write_kind(node):
                present |= {(pre, k) for pre, k in DELEGATED if rel.startswith(pre) and k == _write_kind(node)}
    assert not set(DELEGATED) - present, f"no longer written directly (drop them from DELEGATED): {set(DELEGATED) - present}"


def test_failed_write_keeps_the_old_file_whole(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with IO.atomic_write(p, "w") as f:
            f.write("new, half")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_failed_atomic_path_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with IO.atomic_path(tmp_path / "x.gguf") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []


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


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def test_every_exporter_writes_ordinary_permissions(tmp_path, umask_022):
    """GGUF and repeng exports came out 0600 (mkstemp's mode, never widened): a llama.cpp server running as
    another user could not read them. Every format, and every helper, now gives 0666 less the umask."""
    from persona_axes.export import FORMATS, export_vector

    v = pa.PersonaVector(torch.randn(4, 8), pa.ModelInfo("m", 4, 8), "v", "mean_diff")
    modes = {fmt: stat.S_IMODE(os.stat(export_vector(v, tmp_path / f"v.{fmt}", fmt)).st_mode) for fmt in FORMATS}
    with IO.atomic_path(tmp_path / "raw.bin") as tmp:
        tmp.write_bytes(b"x")
    with IO.atomic_write(tmp_path / "text.txt", "w") as f:
        f.write("x")
    modes["atomic_path"] = stat.S_IMODE(os.stat(tmp_path / "raw.bin").st_mode)
    modes["atomic_write"] = stat.S_IMODE(os.stat(tmp_path / "text.txt").st_mode)
    assert modes == {k: umask_022 for k in modes}, modes
    np.testing.assert_array_equal(np.load(tmp_path / "v.numpy")["vector"], v.vector.numpy())


def test_permissions_follow_the_umask(tmp_path):
    from persona_axes.export import export_vector

    old = os.umask(0o077)
    try:
        v = pa.PersonaVector(torch.randn(4, 8), pa.ModelInfo("m", 4, 8), "v", "mean_diff")
        p = export_vector(v, tmp_path / "v.gguf", "gguf")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
