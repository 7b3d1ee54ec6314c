"""Pictures of predictions: matplotlib figures (Agg, no display) and a self-contained HTML report.

Figures are built on :class:`matplotlib.figure.Figure` objects directly (no pyplot state), so
they are safe to make in loops and worker processes.
"""

from geopose.viz.figures import (
    figure_png,
    image_figure,
    save_figure,
    score_bars,
    training_curves,
)

__all__ = ["figure_png", "image_figure", "save_figure", "score_bars", "training_curves"]
