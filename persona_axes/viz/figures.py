"""What every figure module shares: plotly access, the palette, label and text helpers, argument checks, and
:func:`save_figure` (HTML with plotly.js inlined or written once beside the page; static images through kaleido).

"Layer L" is the output of decoder block L (the residual stream after block L), 0-based, as everywhere in
persona_axes; axis titles say so.
"""

from __future__ import annotations

import html
import math
import os
import textwrap
from pathlib import Path
from typing import Any

from persona_axes.errors import InvalidInputError
from persona_axes.files import atomic_write
from persona_axes.vectors.space import PersonaSpace

#: Qualitative colours for discrete groups (families, conversations, histogram groups).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
DEFAULT_COLOUR = "#111111"
SAMPLE_CHARS = 200
WRAP = 60
_IMAGE_SUFFIXES = {".png": "png", ".svg": "svg", ".pdf": "pdf", ".jpg": "jpg", ".jpeg": "jpeg", ".webp": "webp"}


def plotly_go():
    import plotly.graph_objects as go

    return go


def layer_label(layer: int) -> str:
    return f"layer {layer} (output of decoder block {layer}, 0-based)"


def esc(s: Any) -> str:
    return html.escape(str(s), quote=False)


def wrap_text(text: str, limit: int = SAMPLE_CHARS, width: int = WRAP) -> str:
    """Truncate ``text`` to ``limit`` characters, wrap it at ``width`` and HTML-escape each line."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    lines = textwrap.wrap(text, width=width, break_long_words=True, break_on_hyphens=False) or [""]
    return "<br>".join(esc(line) for line in lines)


def fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def space_position(space: Any, layer: Any) -> int:
    """Position of model layer ``layer`` among the fitted layers of ``space`` (typed errors otherwise)."""
    if not isinstance(space, PersonaSpace):
        raise InvalidInputError(f"expected a fitted PersonaSpace, got {type(space).__name__}")
    space.check_fitted()
    return space.layer_position(layer)


def check_bins(bins: Any) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InvalidInputError(f"bins must be a positive integer, got {bins!r}")
    return bins


def check_number(x: Any, what: str) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise InvalidInputError(f"{what} must be a finite number or None, got {x!r}")
    return float(x)



_KALEIDO_HELP = (
    "Image export needs the kaleido package: pip install kaleido (version 1 or later). Kaleido drives a "
    "Chrome/Chromium browser, which must be installed too (kaleido can fetch one with `plotly_get_chrome` or "
    "kaleido.get_chrome_sync()). Or save the figure as .html, which needs nothing more."
)


PLOTLYJS_FILE = "plotly.min.js"
#: How an HTML page gets plotly.js: ``"inline"`` (inside the page, ~4.8 MB, opens offline anywhere),
#: ``"directory"`` (one ``plotly.min.js`` written beside the pages and shared by them, offline too) or ``"cdn"``
#: (loaded from the internet when the page is opened).
PLOTLYJS_MODES = ("inline", "directory", "cdn")


def check_plotlyjs(mode: Any) -> str:
    if mode not in PLOTLYJS_MODES:
        raise InvalidInputError(f"plotlyjs={mode!r} is not one of {', '.join(PLOTLYJS_MODES)}")
    return mode


def include_plotlyjs(mode: str) -> bool | str:
    """plotly's ``include_plotlyjs`` value for a mode of :data:`PLOTLYJS_MODES`."""
    return {"inline": True, "directory": "directory", "cdn": "cdn"}[check_plotlyjs(mode)]


def write_plotlyjs(folder: str | os.PathLike) -> Path:
    """``folder/plotly.min.js`` (the installed plotly's own), written once: left alone when it already holds it."""
    from plotly.offline import get_plotlyjs

    path = Path(folder) / PLOTLYJS_FILE
    js = get_plotlyjs().encode("utf-8")
    if path.is_file() and path.stat().st_size == len(js) and path.read_bytes() == js:
        return path
    with atomic_write(path, "wb") as f:
        f.write(js)
    return path


def save_figure(fig: Any, path: str | os.PathLike, *, width: int | None = None, height: int | None = None,
                scale: float | None = None, plotlyjs: str = "inline") -> Path:
    """Write ``fig`` to ``path``, atomically; returns the path.

    ``.html`` / ``.htm``: a standalone page; ``plotlyjs`` says where plotly.js comes from (:data:`PLOTLYJS_MODES`:
    ``"inline"`` by default; ``"directory"`` writes one ``plotly.min.js`` beside the page, shared by every page
    saved there, instead of 4.8 MB in each). ``.png``, ``.svg``, ``.pdf``, ``.jpg``/``.jpeg``, ``.webp``: a static
    image via kaleido (``width``/``height``/``scale`` apply); when kaleido or its browser is not usable this raises
    :class:`InvalidInputError` saying how to enable it — it never writes nothing silently.
    """
    go = plotly_go()
    if not isinstance(fig, go.Figure):
        raise InvalidInputError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"path must be a string or path, got {type(path).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        include = include_plotlyjs(plotlyjs)
        if plotlyjs == "directory":
            write_plotlyjs(path.parent)
        page = fig.to_html(full_html=True, include_plotlyjs=include)
        with atomic_write(path, "wb") as f:
            f.write(page.encode("utf-8"))
        return path
    if suffix not in _IMAGE_SUFFIXES:
        raise InvalidInputError(
            f"cannot tell the format of {path.name!r}: use .html, or an image suffix {sorted(_IMAGE_SUFFIXES)}"
        )
    blob = _image_bytes(fig, _IMAGE_SUFFIXES[suffix], path.name, width=width, height=height, scale=scale)
    with atomic_write(path, "wb") as f:
        f.write(blob)
    return path


def _image_bytes(fig: Any, fmt: str, name: str, **opts: Any) -> bytes:
    """The figure as an image through kaleido; InvalidInputError saying how to enable it when it cannot."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise InvalidInputError(f"cannot write {name}: {_KALEIDO_HELP}") from None
    try:
        blob = fig.to_image(format=fmt, **opts)
    except Exception as e:  # kaleido raises assorted errors when it cannot start its browser
        raise InvalidInputError(f"cannot write {name}: image export failed ({type(e).__name__}: {e}). "
                                f"{_KALEIDO_HELP}") from e
    if not blob:
        raise InvalidInputError(f"cannot write {name}: the image backend returned no data. {_KALEIDO_HELP}")
    return blob


class FigureView:
    """A figure as a notebook shows it: interactive where plotly.js runs (the plotly mimetype for JupyterLab /
    VS Code, an HTML div for classic Jupyter and nbviewer), and still visible in a static render (GitHub, nbconvert
    without JavaScript): a PNG when kaleido can draw one, and always a plain-HTML caption naming the figure and
    its saved standalone copy. Made by :func:`show`; ``.figure`` is the plotly figure."""

    def __init__(self, figure: Any, path: Path | None = None):
        self.figure = figure
        self.path = path

    def title(self) -> str:
        t = self.figure.layout.title.text
        return str(t) if t else "figure"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        import json

        saved = f"; standalone copy: <code>{esc(self.path)}</code>" if self.path is not None else ""
        caption = (f"<p style='font-family:sans-serif;font-size:13px'>Figure: <b>{self.title()}</b> "
                   f"(interactive plotly figure{saved})</p>")
        div = self.figure.to_html(full_html=False, include_plotlyjs="cdn")
        bundle: dict[str, Any] = {"application/vnd.plotly.v1+json": json.loads(self.figure.to_json()),
                                  "text/html": caption + div, "text/plain": f"<figure: {self.title()}>"}
        try:
            bundle["image/png"] = _image_bytes(self.figure, "png", "the notebook image")
        except InvalidInputError:  # no kaleido (or no browser for it): the caption is the static fallback
            pass
        return bundle

    def __repr__(self) -> str:
        return f"FigureView({self.title()!r}, path={str(self.path) if self.path else None!r})"


def show(fig: Any, path: str | os.PathLike | None = None, *, plotlyjs: str = "inline") -> FigureView:
    """``fig`` for display as a notebook cell's result (see :class:`FigureView`), saved first to ``path`` with
    :func:`save_figure` when given (``plotlyjs="directory"`` shares one plotly.min.js among the saved pages)."""
    go = plotly_go()
    if not isinstance(fig, go.Figure):
        raise InvalidInputError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    saved = save_figure(fig, path, plotlyjs=plotlyjs) if path is not None else None
    return FigureView(fig, saved)

__all__ = ["PALETTE", "DEFAULT_COLOUR", "plotly_go", "layer_label", "esc", "wrap_text", "fmt", "space_position",
           "check_bins", "check_number", "save_figure", "PLOTLYJS_FILE", "PLOTLYJS_MODES", "check_plotlyjs",
           "include_plotlyjs", "write_plotlyjs", "FigureView", "show"]
