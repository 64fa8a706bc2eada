"""The shipped vectors are installable data: ``persona_axes/data/vectors`` links to the repository's ``vectors/``
(the one source of truth), :func:`persona_axes.core.shipped_vectors_dir` finds them, and a wheel built from the
tree carries every file byte for byte, so ``pip install`` users get them too."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from persona_axes.files import shipped_vectors_dir
from persona_axes.errors import InvalidInputError

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "vectors"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shipped_vectors_dir_holds_the_repository_files():
    d = shipped_vectors_dir()
    assert d.name == "smollm2-135m-instruct"
    want = _files(SOURCE / "smollm2-135m-instruct")
    assert {"assistant_axis.safetensors", "capping.safetensors", "roles.safetensors", "default.safetensors",
            "summary.json"} <= set(want)
    assert _files(d) == want


def test_shipped_vectors_load_through_the_public_api():
    import persona_axes as pa

    axis = pa.PersonaVector.load(shipped_vectors_dir() / "assistant_axis.safetensors")
    assert axis.model.n_layers == 30 and axis.model.hidden_size == 576


@pytest.mark.parametrize("bad", ["nope", "../vectors", "", 3])
def test_unknown_shipped_model_is_refused(bad):
    with pytest.raises(InvalidInputError):
        shipped_vectors_dir(bad)


@pytest.mark.slow
def test_a_built_wheel_carries_the_vectors(tmp_path):
    """Build a wheel from a copy of the tree (links kept as links, as git checks them out) and compare its
    vectors with the repository's, byte for byte."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "persona_axes", src / "persona_axes", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(SOURCE, src / "vectors")
    assert (src / "persona_axes" / "data" / "vectors").is_symlink()
    out = tmp_path / "dist"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    wheel = next(out.glob("*.whl"))
    prefix = "persona_axes/data/vectors/"
    with zipfile.ZipFile(wheel) as z:
        got = {n[len(prefix):]: z.read(n) for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")}
    assert got == _files(SOURCE)
