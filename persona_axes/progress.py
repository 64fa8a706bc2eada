"""Progress bars: tqdm's notebook widget where ipywidgets is installed, else the plain bar, never the
"IProgress not found" warning. Imported first by the package so the quiet import of ``tqdm.auto`` happens
before transformers imports it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _import_tqdm_auto_quietly() -> None:
    """Where ipywidgets is missing, import ``tqdm.auto`` once with its "IProgress not found" warning silenced: in a
    Jupyter kernel its first import (ours or transformers') warns, then falls back to the plain bar, which is right."""
    import importlib.util
    import sys
    import warnings

    if "tqdm.auto" in sys.modules or importlib.util.find_spec("ipywidgets") is not None:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*IProgress not found.*")
        import tqdm.auto  # noqa: F401


_import_tqdm_auto_quietly()


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """tqdm.auto's bar (the notebook widget with ipywidgets, else the plain bar), never the IProgress warning."""
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


__all__ = ["progress_bar"]
