"""Running trials: a worker asks the study for trials, evaluates them and records each in
Optuna and MLflow, under heartbeats, until the budget is spent.

=================  ======================================================================
``_worker``        the worker loop: ask trials, wait for others, stop cleanly
``_ask``           asking trials: queued points, or sampled ones in budget, no point twice
``_run``           running asked trials with heartbeats; told to Optuna, then MLflow
``_trial``         one trial's config; the per-worker model/evaluator cache (OOM-safe)
``_record``        a trial's Optuna attributes and MLflow run
``_writer``        MLflow writes inline or in a writer process, so trials never wait on them
``_parent``        the study's one MLflow parent run: started, reconciled, reopened
``_spawn``         worker processes on this machine
=================  ======================================================================

Example::

    from meminject.runner import run_worker
    run_worker("demo", "/tmp/optuna.journal", progress=False)
"""

from ._parent import start_parent_run
from ._spawn import spawn_workers
from ._trial import TrialRunner, trial_config
from ._worker import run_worker

__all__ = ["run_worker", "spawn_workers", "TrialRunner", "trial_config", "start_parent_run"]
