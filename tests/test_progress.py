"""progress.progress_bar, and no "IProgress not found" warning in Jupyter without ipywidgets: tqdm.auto warned at its
first import in a kernel (ours or transformers'), so core imports it first, quietly."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

from persona_axes import progress

ROOT = Path(__file__).resolve().parent.parent

# A stand-in for an IPython kernel (what tqdm.autonotebook checks), with ipywidgets made unimportable.
KERNEL = """
import sys, types, warnings
warnings.simplefilter("always")
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
ipy = types.ModuleType("IPython")
ipy.get_ipython = lambda: types.SimpleNamespace(config={"IPKernelApp": {}})
sys.modules["IPython"] = ipy
sys.modules["ipywidgets"] = None
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KERNEL + code], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_tqdm_auto_warns_in_a_kernel_without_ipywidgets():
    """The control: without persona_axes first, importing tqdm.auto in such a kernel warns."""
    p = _run("import tqdm.auto")
    assert p.returncode == 0 and "IProgress not found" in p.stderr, p.stderr[-2000:]


def test_importing_persona_axes_first_silences_it():
    p = _run("import persona_axes\nimport tqdm.auto\nimport transformers\nfrom persona_axes.progress import progress_bar\n"
             "list(progress_bar(range(3), disable=True))\nprint('ok')")
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
    assert "IProgress" not in p.stderr, p.stderr[-2000:]


def test_progress_bar_is_tqdm_and_counts():
    import tqdm.std

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = progress.progress_bar(range(3), disable=True)
    assert isinstance(bar, tqdm.std.tqdm) and list(bar) == [0, 1, 2]
