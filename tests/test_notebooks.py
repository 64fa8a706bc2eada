"""The notebooks in notebooks/ run top to bottom on the embedded model (a failing cell fails the test, with the
cell's error shown), and the committed files are output-free and match notebooks/make_notebooks.py."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
KERNEL = "persona-axes-notebook-test"


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_three_notebooks_exist():
    assert NAMES == ["01_persona_space.ipynb", "02_steering_and_export.ipynb", "03_drift_and_capping.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_output_free_and_generated(name):
    nbformat = pytest.importorskip("nbformat")
    text = (NOTEBOOKS / name).read_text()
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: commit it without outputs"
    assert text == _generator().render(name), (
        f"{name} differs from notebooks/make_notebooks.py: edit the script and run it to rewrite the notebooks"
    )


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernel spec that starts *this* interpreter (the venv's python), found first through JUPYTER_PATH, so a
    `python3` kernel registered elsewhere on the machine can never be picked up instead."""
    home = tmp_path_factory.mktemp("jupyter")
    spec_dir = home / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "persona_axes tests", "language": "python",
    }))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(home))
    mp.setenv("IPYTHONDIR", str(home / "ipython"))  # no user profile or startup files
    yield mp
    mp.undo()


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernel_env, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbclient.exceptions import CellExecutionError

    out = tmp_path / "out"
    kernel_env.setenv("PERSONA_AXES_NOTEBOOK_OUT", str(out))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=600, startup_timeout=120,
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # run where a user would: in notebooks/
    )
    t0 = time.time()
    try:
        client.execute()
    except CellExecutionError as e:
        nbformat.write(nb, tmp_path / name)  # the partly executed notebook, for a closer look
        pytest.fail(f"{name}: a cell failed (executed copy: {tmp_path / name})\n{e}", pytrace=False)
    print(f"{name}: {time.time() - t0:.0f}s")
    figures = sorted(p.name for p in out.glob("*.html"))
    assert figures, f"{name} wrote no figures to {out}"
    # plotly.js once beside the pages, not 4.8 MB inside each
    assert (out / "plotly.min.js").is_file() and all((out / f).stat().st_size < 1_000_000 for f in figures)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    # no "IProgress not found" warning from a progress bar (tqdm.auto without ipywidgets)
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "IProgress" not in streams, streams[:2000]
    # every figure still shows in a static render: a caption outside any script (and a PNG where kaleido can draw)
    shown = [o for o in outputs if o.output_type in ("execute_result", "display_data")
             and "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(shown) == len(figures), (len(shown), figures)
    for o in shown:
        caption = o["data"]["text/html"].split("<div", 1)[0]
        assert "Figure: <b>" in caption and "<script" not in caption
