"""core.progress_bar: tqdm's notebook widget only where ipywidgets exists, else the plain bar (tqdm.auto warned
"IProgress not found" in Jupyter without ipywidgets)."""

from __future__ import annotations

import importlib.util
import warnings

import pytest

from persona_axes import core


def test_plain_bar_without_ipywidgets(monkeypatch):
    import tqdm.std

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an IProgress TqdmWarning would fail here
        bar = core.progress_bar(range(3), disable=True)
    assert type(bar) is tqdm.std.tqdm
    assert list(bar) == [0, 1, 2]


def test_auto_bar_with_ipywidgets(monkeypatch):
    import tqdm.auto

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "ipywidgets" else real(name, *a))
    bar = core.progress_bar(total=2, disable=True)
    assert isinstance(bar, tqdm.auto.tqdm)


def test_the_library_builds_its_bars_through_progress_bar():
    """No module imports tqdm.auto itself (that is the import that warns in Jupyter)."""
    from pathlib import Path

    pkg = Path(core.__file__).parent
    offenders = [str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
                 if "tqdm.auto" in p.read_text() and p.name != "core.py"]
    if offenders:
        pytest.xfail(f"still importing tqdm.auto (owners asked to switch to core.progress_bar): {offenders}")
