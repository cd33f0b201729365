"""Picking sites honestly: a study's ranked sites, re-checked in float32, judged on held-out
prompts against the controls (Holm-corrected), and the chosen one exported.

=================  ======================================================================
``_results``       ranked sites, best τ per site, control gaps, Pareto fronts
``_recheck``       a lower-precision sweep's top sites re-evaluated in float32
``_heldout``       top sites re-run on held-out prompts, with controls and verdicts
``_stats``         bootstrap intervals, paired sign-flip tests, Holm
``_plausible``     stored values a gain cannot take, refused before ranking
``_final``         the end of a sweep: tables and figures on the parent run
``_export``        one site as ``injection.json``
=================  ======================================================================

Example::

    from meminject.store import load_study
    from meminject.selection import ranked_sites
    print(ranked_sites(load_study("demo", "/tmp/optuna.journal"), top=3))
"""

from ._export import export_site
from ._final import finalize, study_figures
from ._heldout import CONTROL_TYPES, heldout_report
from ._results import control_gaps, distinct_sites, ranked_sites

__all__ = [
    "ranked_sites",
    "distinct_sites",
    "control_gaps",
    "heldout_report",
    "CONTROL_TYPES",
    "finalize",
    "study_figures",
    "export_site",
]
