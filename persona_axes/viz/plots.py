"""All persona_axes figures in one namespace (``from persona_axes.viz import plots``): every function returns a
:class:`plotly.graph_objects.Figure` with a title, axis labels and hover text; show it with ``fig.show()`` (or
:func:`show` for a render that also survives a static notebook view) or write it with :func:`save_figure`.

The figures live by family in :mod:`~persona_axes.viz.space_plots` (persona map, scree),
:mod:`~persona_axes.viz.layer_plots` (layer sweep, trait cosines), :mod:`~persona_axes.viz.projection_plots`
(drift curves, projection histograms), :mod:`~persona_axes.viz.intensity_plots` (behaviour vs steering
coefficient) and :mod:`~persona_axes.viz.figures` (shared helpers, saving).
"""

from __future__ import annotations

from persona_axes.viz.figures import FigureView, save_figure, show
from persona_axes.viz.intensity_plots import intensity_figure
from persona_axes.viz.layer_plots import layer_sweep, trait_cosine_heatmap
from persona_axes.viz.projection_plots import drift_curves, projection_histogram
from persona_axes.viz.space_plots import persona_map, scree

__all__ = [
    "persona_map",
    "scree",
    "layer_sweep",
    "trait_cosine_heatmap",
    "drift_curves",
    "projection_histogram",
    "intensity_figure",
    "save_figure",
    "show",
    "FigureView",
]
