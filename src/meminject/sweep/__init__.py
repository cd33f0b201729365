"""Sweeps: Optuna studies over Hydra search spaces, run by worker processes, tracked in MLflow.

A sweep preset (``sweeps/NAME.yaml``) names what it optimizes, a sampler, a trial budget,
fixed config and the searched axes (see :mod:`meminject.space`). ``meminject sweep``
creates or resumes the study, stores everything a worker needs in the study itself, opens
the MLflow parent run and runs workers: in-process (``workers=1``) or as N processes on the
same storage. ``meminject worker`` joins a study from any shell or machine that reaches its
storage; ``meminject best`` ranks its sites and judges them on held-out prompts.

The package reads like Optuna's ``optuna/study/``: one private file per idea, this public face.

======================  =====================================================================
``_settings``           command keys, presets, the stored :class:`SweepSpec`
``_storage``            opening the study storage (journal repair, drivers), finding a study
``_study``              the space against the model, sampler, budget, grid queue, storage lock
``_trial``              one trial's config; the per-worker model/evaluator cache (OOM-safe)
``_worker``             the worker loop: ask trials, wait for others, stop cleanly
``_run``                running asked trials with heartbeats; told to Optuna, then MLflow
``_record``             a trial's Optuna attributes and MLflow run
``_results``            ranked sites, best τ per site, control gaps
``_heldout``            top sites re-run on held-out prompts, with controls
``_parent``             the study's one MLflow parent run; final tables and figures
``_spawn``              worker processes on this machine
``_commands``           ``sweep``, ``worker``, ``best``
``_optuna``             the only use of Optuna's private API
======================  =====================================================================

Example::

    from meminject.sweep import load_sweep, prepare_study, run_worker, ranked_sites
    spec, _ = load_sweep(["sweep=smoke", "model=tiny", "study=demo"])
    study, space, base = prepare_study(spec, "/tmp/optuna.journal")
    run_worker(spec.study_name, "/tmp/optuna.journal", progress=False)
    print(ranked_sites(study, top=3))
"""

from ._commands import cmd_best, cmd_sweep, cmd_worker, help_epilog, run_best
from ._repair import cmd_repair
from ._heldout import CONTROL_TYPES, heldout_report
from ._parent import study_figures
from ._results import control_gaps, distinct_sites, ranked_sites
from ._settings import SweepSpec, load_sweep
from ._storage import default_storage_url, load_study, open_storage
from ._study import prepare_study, resolve_space
from ._trial import TrialRunner, trial_config
from ._worker import run_worker

__all__ = [
    "SweepSpec",
    "load_sweep",
    "prepare_study",
    "resolve_space",
    "run_worker",
    "ranked_sites",
    "distinct_sites",
    "control_gaps",
    "heldout_report",
    "CONTROL_TYPES",
    "open_storage",
    "default_storage_url",
    "load_study",
    "TrialRunner",
    "trial_config",
    "cmd_sweep",
    "cmd_worker",
    "cmd_best",
    "cmd_repair",
    "run_best",
    "study_figures",
    "help_epilog",
]
