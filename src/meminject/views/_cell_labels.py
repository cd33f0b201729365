"""Value labels inside heatmap cells that never overlap and never leave their panel.

Each label is sized to fit inside its own cell (measured with the figure's renderer, after
the layout is final): cells do not overlap and lie inside the panel, so neither do the labels.
A value too long for the smallest readable size becomes the cell's rank (1, 2, 3), with the
values listed under the panel; a cell too small even for that keeps no label (and says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CellLabel", "best_cells", "label_cells", "format_gain", "MIN_FONT", "MAX_FONT"]

MAX_FONT = 7.0  # points: the labels' size when the cell has room
MIN_FONT = 5.0  # points: below this a printed label is hard to read (at 110 dpi: 7-8 pixels)
_FILL = 0.9  # a label may use this much of its cell's width and height


@dataclass
class CellLabel:
    """One labelled cell: (layer, τ column), the text drawn (value or rank) and its size."""

    layer: int
    column: int
    value: float
    text: str
    fontsize: float
    artist: object = None


def format_gain(value: float) -> str:
    return f"{value:+.3f}" if abs(value) >= 5e-4 or value == 0 else f"{value:+.1e}"


def best_cells(grid: np.ndarray, n: int) -> list[tuple[int, int]]:
    """The ``n`` best explored cells of a panel, only those above zero (a cell that lowers the
    answer's probability is never labelled as a best one)."""
    values = np.where(np.isfinite(grid) & (grid > 0), grid, -np.inf)
    order = np.argsort(values, axis=None, kind="stable")[::-1][:n]
    cells = [tuple(int(i) for i in np.unravel_index(flat, grid.shape)) for flat in order]
    return [(layer, column) for layer, column in cells if np.isfinite(values[layer, column])]


def _fits(text, cell, renderer) -> bool:
    box = text.get_window_extent(renderer)
    pad = 2 * 0.1 * text.get_fontsize() * text.figure.dpi / 72  # the label's square box, pad 0.1
    return box.width + pad <= _FILL * cell.width and box.height + pad <= _FILL * cell.height


def _cell_box(ax, layer: int, column: int):
    from matplotlib.transforms import Bbox

    (x0, y0), (x1, y1) = ax.transData.transform([(column - 0.5, layer - 0.5), (column + 0.5, layer + 0.5)])
    return Bbox.from_extents(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def label_cells(ax, grid: np.ndarray, cells: list[tuple[int, int]]) -> list[CellLabel]:
    """Draw the labels of ``cells`` on ``ax`` (whose layout is final), each fitted in its cell."""
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for rank, (layer, column) in enumerate(cells, start=1):
        value = float(grid[layer, column])
        cell = _cell_box(ax, layer, column)
        text = ax.text(
            column,
            layer,
            format_gain(value),
            ha="center",
            va="center",
            fontweight="bold",
            color="white",
            zorder=5,  # over the hatching of clipped cells
            bbox={"boxstyle": "square,pad=0.1", "facecolor": (0, 0, 0, 0.75), "linewidth": 0},
        )
        for candidate in (format_gain(value), str(rank)):
            text.set_text(candidate)
            size = MAX_FONT
            text.set_fontsize(size)
            while size > MIN_FONT and not _fits(text, cell, renderer):
                size = max(MIN_FONT, size - 0.5)
                text.set_fontsize(size)
            if _fits(text, cell, renderer):
                break
        else:
            text.remove()  # no readable label fits: the list under the panel carries it
            text = None
        placed.append(
            CellLabel(layer, column, value, text.get_text() if text else "", text.get_fontsize() if text else 0, text)
        )
    return placed
