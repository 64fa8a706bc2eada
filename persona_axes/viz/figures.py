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


def save_figure(fig: Any, path: str | os.PathLike, *, width: int | None = None, height: int | None = None,
                scale: float | None = None) -> Path:
    """Write ``fig`` to ``path``, atomically; returns the path.

    ``.html`` / ``.htm``: a standalone page with plotly.js inlined (works offline). ``.png``, ``.svg``, ``.pdf``,
    ``.jpg``/``.jpeg``, ``.webp``: a static image via kaleido (``width``/``height``/``scale`` apply); when kaleido
    or its browser is not usable this raises :class:`InvalidInputError` saying how to enable it — it never
    writes nothing silently.
    """
    go = plotly_go()
    if not isinstance(fig, go.Figure):
        raise InvalidInputError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"path must be a string or path, got {type(path).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        page = fig.to_html(full_html=True, include_plotlyjs=True)
        with atomic_write(path, "wb") as f:
            f.write(page.encode("utf-8"))
        return path
    if suffix not in _IMAGE_SUFFIXES:
        raise InvalidInputError(
            f"cannot tell the format of {path.name!r}: use .html, or an image suffix {sorted(_IMAGE_SUFFIXES)}"
        )
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise InvalidInputError(f"cannot write {path.name}: {_KALEIDO_HELP}") from None
    try:
        blob = fig.to_image(format=_IMAGE_SUFFIXES[suffix], width=width, height=height, scale=scale)
    except Exception as e:  # kaleido raises assorted errors when it cannot start its browser
        raise InvalidInputError(f"cannot write {path.name}: image export failed ({type(e).__name__}: {e}). "
                                f"{_KALEIDO_HELP}") from e
    if not blob:
        raise InvalidInputError(f"cannot write {path.name}: the image backend returned no data. {_KALEIDO_HELP}")
    with atomic_write(path, "wb") as f:
        f.write(blob)
    return path


__all__ = ["PALETTE", "DEFAULT_COLOUR", "plotly_go", "layer_label", "esc", "wrap_text", "fmt", "space_position",
           "check_bins", "check_number", "save_figure"]
