"""The study's one MLflow parent run: created (or found) under the storage lock, reconciled
after an interruption, and reopened by later commands (``best``, ``export``). Its final
tables and figures are :mod:`meminject.selection._final`'s."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..config._compose import flat_config, to_yaml
from ..core._errors import TrackingError
from ..core._paths import outputs_dir
from ..tracking._schema import from_attrs, site_label
from ..tracking._tracker import Tracker, redact, redacted_container, tracking_uri
from ..search._settings import SweepSpec
from ..store._storage import default_storage_url
from ..search._study import ATTR_PARENT
from ..store._storage import storage_lock
from ..tracking._schema import TAG_RECONCILED, TAG_SAMPLER, TAG_STATE, TAG_SWEEP, TAG_TRIAL_NUMBER

__all__ = ["start_parent_run", "reconcile_runs", "best_csv", "parent_tracker"]

log = logging.getLogger("meminject")


def best_csv(study_name: str) -> Path:
    return outputs_dir("best") / f"{study_name}.csv"


def start_parent_run(
    study: optuna.Study, spec: SweepSpec, base: Any, tracker: Tracker | None, storage_url: str | None
) -> None:
    """Reopen the study's parent run, or create it: exactly one per study, also when two
    sweeps start at once (the check and the creation hold the storage lock)."""
    if tracker is None:
        return
    from ..store._optuna import storage_of

    with storage_lock(storage_url, storage_of(study)):
        parent = study.user_attrs.get(ATTR_PARENT)
        if not parent:
            params = {
                "sweep": spec.name,
                "sampler": spec.sampler,
                "n_trials": spec.n_trials,
                "seed": spec.seed,
                "objective": ",".join(spec.all_objectives()),
                "direction": ",".join(spec.all_directions()),
                "constraint": spec.constraint or "-",
                "model": base.model.name,
                "weights": base.model.weights,
                "dataset": base.data.name,
                "storage": redact(storage_url or default_storage_url()),
            }
            params.update({f"space.{k}": v for k, v in spec.params.items()})
            params.update({f"config.{k}": v for k, v in flat_config(redacted_container(base)).items()})
            parent = tracker.start_parent(spec.study_name, params, {TAG_SAMPLER: spec.sampler})
            shown = json.loads(spec.to_json())
            shown["overrides"] = [redact(o) for o in shown["overrides"]]
            tracker.log_text(parent, "sweep.json", json.dumps(shown, indent=2))
            tracker.log_text(parent, "base_config.yaml", to_yaml(redacted_container(base)))
            study.set_user_attr(ATTR_PARENT, parent)
            return
    tracker.follow(parent)
    tracker.reopen(parent)
    reconcile_runs(study, spec, tracker)


def reconcile_runs(study: optuna.Study, spec: SweepSpec, tracker: Tracker) -> int:
    """After an interruption or a tracking failure: every complete trial has a FINISHED run with
    its params and metrics (written now from the study when MLflow missed them), and no other
    trial's run stays RUNNING. Returns how many runs were written or completed."""
    from ._record import reconciled_params
    from ._trial import trial_config

    parent = study.user_attrs.get(ATTR_PARENT)
    runs = {}
    for run in tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`meminject.study` = '{spec.study_name}' and tags.`meminject.role` = 'trial'",
        max_results=50_000,
    ):
        runs.setdefault(int(run.data.tags[TAG_TRIAL_NUMBER]), run)
    fixed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        run = runs.get(t.number)
        if t.state == TrialState.FAIL:
            if run is not None and run.info.status == "RUNNING":
                tracker.finish(run.info.run_id, "FAILED")
            continue
        metric = (
            spec.objective if t.state == TrialState.COMPLETE else f"partial_{spec.objective}"
        )  # what the trial's run must show
        if run is not None and metric in run.data.metrics and run.info.status == "FINISHED":
            continue
        site = (
            site_label(from_attrs(t.user_attrs)) if from_attrs(t.user_attrs) else None
        )  # the name a live trial's run gets
        run_id = (
            run.info.run_id
            if run is not None
            else tracker.start_trial(
                parent, t.number, spec.study_name, {TAG_SAMPLER: spec.sampler, TAG_SWEEP: spec.name}, site=site
            )
        )
        if metric not in (run.data.metrics if run is not None else {}):
            metrics = {
                k: v
                for k, v in t.user_attrs.items()
                if isinstance(v, (int, float))
                and not isinstance(v, bool)
                and not k.startswith(("site.", "worker_index"))
            }
            tracker.finish_trial(
                run_id, reconciled_params(trial_config(spec.overrides, t.params)), metrics, {}, terminate=False
            )
            tracker.client.set_tag(
                run_id, TAG_RECONCILED, "written on resume from the study (MLflow had missed this trial)"
            )
        if t.state == TrialState.PRUNED:
            tracker.client.set_tag(run_id, TAG_STATE, "PRUNED")
        tracker.finish(run_id, "FINISHED")
        fixed += 1
    if fixed:
        log.warning("note: %d trial run(s) written or closed in MLflow from the study", fixed)
    return fixed


def parent_tracker(base, parent: str, name: str) -> Tracker | None:
    """The tracker holding the study's parent run, or None with one note: ``best`` run from
    another folder (or machine) on a shared study finds another store (or none) there, and
    neither creates a store nor fails on a run it cannot find."""
    from mlflow.exceptions import MlflowException

    from ..tracking._retry import sqlite_path

    if not base.tracking.enabled:
        return None
    uri = tracking_uri(base)
    note = (
        f"note: the sweep's MLflow parent run {parent} is not in {redact(uri)}; the table is not logged to MLflow "
        "(run best where the sweep ran, or set tracking.uri or MLFLOW_TRACKING_URI to the sweep's store)"
    )
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        print(note)
        return None
    tracker = Tracker.from_config(base, study=name)
    try:
        tracker.client.get_run(parent)
    except (MlflowException, TrackingError) as exc:  # the retrying client says a missing run in one line
        cause = exc.__cause__ if isinstance(exc, TrackingError) else exc
        if getattr(cause, "error_code", "") != "RESOURCE_DOES_NOT_EXIST" and "not found" not in str(cause):
            raise
        print(note)
        return None
    return tracker
