"""What people look at: the sweep's figures and tables, and the head projector's views.

=====================  ==================================================================
``_figures``           a study's figures: heatmaps, scatter, Optuna's views, per-prompt gains
``_heatmap``           the layer × τ gain heatmap (log-binned for a log τ search)
``_scatter``           every trial by layer and τ
``_cell_labels``       readable gains in heatmap cells
``_cross_model``       gain by relative depth across models
``_specific_figure``   correct against another prompt's memory, by layer
``_phases``            where an adaptive search looked: rounds, phases, fidelity
``_tables``            ranked-site tables for the terminal
``_inspect``           the head latent-space projector and its heatmap
=====================  ==================================================================

Example::

    from meminject.views import sweep_figures
"""

from ._figures import pareto_figure, per_prompt_gains, sweep_figures
from ._tables import format_table

__all__ = ["sweep_figures", "pareto_figure", "per_prompt_gains", "format_table"]
