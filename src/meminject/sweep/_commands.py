"""The sweep, worker and best commands: each parses its keys, calls one function, and always
closes what it opened (the parent run ends FINISHED, RUNNING for a budget left to other
workers, KILLED after Ctrl-C/SIGTERM, or FAILED)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from optuna.trial import TrialState

from ..config import load_run_config
from ..core._errors import ConfigError, TrackingError, first_line
from ..core._paths import outputs_dir
from ._recovery import DEFAULT_HEARTBEAT
from ..tracking._tracker import Tracker, redact, tracking_uri
from ._cross_model import depth_curve, depth_figure, format_per_model, heldout_gains, per_model_top, several_models
from ._figures import pareto_figure
from ._edges import edge_notes, with_edges
from ._specific_figure import specific_curve, specific_figure
from ._heldout import check_controls, format_heldout, heldout_report
from ._recheck import float32_recheck
from ._repair import REPAIR_SETTINGS
from ._parent import best_csv, finalize, start_parent_run
from ._plausible import check_values
from ._results import distinct_sites, format_table, ranked_sites
from ._settings import (
    BEST_SETTINGS,
    SWEEP_SETTINGS,
    WORKER_SETTINGS,
    SweepSpec,
    as_bool,
    as_non_negative_int,
    as_positive_int,
    load_sweep,
    parse_settings,
    presets,
)
from ._spawn import die_with_parent, spawn_workers
from ._storage import default_storage_url, load_study
from ._study import ATTR_PARENT, budget, budget_line, counted, name_study, preflight, prepare_study, stored_spec
from ._run import signals_held
from ._trial import TrialRunner
from ._worker import repeats_of, run_worker
from ..tracking._schema import TAG_HOLDS, TAG_VERDICTS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["cmd_sweep", "cmd_worker", "cmd_best", "run_best", "help_epilog"]


def help_epilog(command: str) -> str:
    """The keys of ``command`` (and, for sweep, every preset with its description)."""
    keys = {"sweep": SWEEP_SETTINGS, "worker": WORKER_SETTINGS, "best": BEST_SETTINGS, "repair": REPAIR_SETTINGS}[
        command
    ]
    width = max(map(len, keys)) + 2
    lines = [f"{command} keys (key=value):"] + [f"  {k + '=':<{width}} {v}" for k, v in keys.items()]
    if command == "sweep":
        found = presets()
        pad = max(map(len, found)) + 2
        lines += ["", "presets (sweep=NAME; ./sweeps/NAME.yaml adds your own):"] + [
            f"  {name:<{pad}} {text}" for name, (_, text) in sorted(found.items())
        ]
        lines += [
            "",
            "any other key=value is a config override (see meminject eval --help), or a searched axis: key='interval(1,15)', 'range(0,all)', 'choice(a,b)'",
        ]
    return "\n".join(lines)


_MAX_HEARTBEAT_S = 86_400


def _max_workers() -> int:
    """Worker processes this machine can hold: each loads its own model copy and shares the cores."""
    return 4 * (os.cpu_count() or 1)


def _heartbeat_setting(settings: dict[str, str]) -> tuple[int, int] | None:
    """``heartbeat=SECONDS grace=SECONDS`` (None: keep the study's, or the default)."""
    if "heartbeat" not in settings and "grace" not in settings:
        return None
    interval = as_positive_int(settings.get("heartbeat", DEFAULT_HEARTBEAT[0]), "heartbeat")
    grace = as_positive_int(settings.get("grace", max(DEFAULT_HEARTBEAT[1], 4 * interval)), "grace")
    for key, value in (("heartbeat", interval), ("grace", grace)):
        if value > _MAX_HEARTBEAT_S:  # a timestamp that far ahead overflows, and the trial would never go stale
            raise ConfigError(
                f"{key}={value} is over a day ({_MAX_HEARTBEAT_S} s): a dead worker's trial would never be re-run; use at most {_MAX_HEARTBEAT_S}"
            )
    if grace <= interval:
        raise ConfigError(
            f"grace={grace} must be longer than heartbeat={interval} (a trial is stale after missing beats for the grace period)"
        )
    return interval, grace


def _tracker(base, study: str) -> Tracker | None:
    tracker = Tracker.from_config(base, study=study)
    if tracker is not None:
        try:
            tracker.check_reachable()
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"tracking server {redact(tracking_uri(base))} is unreachable ({first_line(exc, 160)}); start it or set tracking.uri"
            ) from exc
    return tracker


def cmd_sweep(args: Sequence[str]) -> int:
    spec, settings = load_sweep(args)
    workers = as_non_negative_int(settings.get("workers", 1), "workers")
    if workers > _max_workers():
        raise ConfigError(
            f"workers={workers} is more than this machine can hold ({os.cpu_count()} cores: at most {_max_workers()}, "
            "each worker loads its own model); use fewer, or start `meminject worker` on other machines"
        )
    progress = as_bool(settings.get("progress", "true"), "progress")
    heartbeat = _heartbeat_setting(settings)
    storage_url = settings.get("storage")
    resolved = preflight(spec)  # the whole input checked before any study, run, file or folder exists
    tracker = _tracker(resolved[0], name_study(spec, resolved[0]))
    study, space, base = prepare_study(spec, storage_url, heartbeat, resolved)
    start_parent_run(study, spec, base, tracker, storage_url)
    total = budget(spec, space)
    where = redact(storage_url or default_storage_url())
    goal = " and ".join(f"{d} {o}" for o, d in zip(spec.all_objectives(), spec.all_directions())) + (
        f" subject to {spec.constraint}" if spec.constraint else ""
    )
    print(
        f"sweep {spec.name}: study {spec.study_name} · {spec.sampler} sampler · {total} trials · {goal} · axes {', '.join(f'{k}={v}' for k, v in spec.params.items())}"
    )
    print(f"  storage {where} · workers {workers}" + (f" · MLflow {redact(tracking_uri(base))}" if tracker else ""))
    done_before = len(counted(study))
    resumed = budget_line(spec.study_name, total, done_before)
    if resumed:
        print(resumed)
    if done_before > total:
        pass  # the budget line said it: nothing to run
    elif done_before == total and not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        print(f"study {spec.study_name} is complete ({done_before} trials): nothing to run")
    elif workers == 0:
        # Prepare only: the study, its grid queue and the parent run exist; workers start anywhere.
        print(
            f"  prepared; start workers (any machine that reaches the storage and the tracking server):\n"
            f"    meminject worker study={spec.study_name} storage={where}\n"
            f"  then rerun this command to finish the parent run and write the ranked sites"
        )
        return 0
    started = time.perf_counter()
    _run_and_close(study, spec, tracker, workers, storage_url, total, progress)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    repeats = repeats_of(study)
    if done_before < total:
        new = len(complete) + len(pruned) - done_before
        print(
            f"done: {len(complete)} complete trials"
            + (f", {len(pruned)} pruned" if pruned else "")
            + f" ({new} new) in {time.perf_counter() - started:.1f} s"
            + (f"; {repeats} sampled points already in the study were not run again" if repeats else "")
        )
    print(format_table(ranked_sites(study, top=5)))
    print(f"ranked sites: {best_csv(study.study_name)}")
    return 0


def _run_and_close(
    study, spec: SweepSpec, tracker: Tracker | None, workers: int, storage_url: str | None, total: int, progress: bool
) -> None:
    """Run the workers; whatever happens, write the results and close the parent run."""
    status = "FINISHED"
    try:
        if workers == 1:
            run_worker(spec.study_name, storage_url, progress=progress)
        elif workers > 1:
            spawn_workers(
                spec.study_name, storage_url, workers, total, progress, tracker.uri if tracker is not None else None
            )
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        parent = study.user_attrs.get(ATTR_PARENT) if tracker is not None else None
        try:
            finalize(study, tracker, interrupted=status == "KILLED")
        except BaseException:
            status = "FAILED" if status == "FINISHED" else status  # e.g. a full disk under ./outputs
            raise
        finally:
            if parent:
                if status == "FINISHED" and len(counted(study)) < total:
                    status = "RUNNING"  # other workers still owe trials; their last rerun closes it
                with signals_held(), contextlib.suppress(Exception):
                    tracker.finish(parent, status)


def cmd_worker(args: Sequence[str]) -> int:
    settings, _ = parse_settings(args, WORKER_SETTINGS, "worker")
    if "study" not in settings:
        raise ConfigError("meminject worker needs study=NAME (and storage=URL unless the default)")
    index = as_non_negative_int(settings["worker_index"], "worker_index") if "worker_index" in settings else None
    max_trials = as_positive_int(settings["max_trials"], "max_trials") if "max_trials" in settings else None
    progress = as_bool(settings.get("progress", "true"), "progress")
    if os.environ.get("MEMINJECT_COORDINATOR_PID"):
        die_with_parent()
    threads = os.environ.get("MEMINJECT_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    ran = run_worker(
        settings["study"], settings.get("storage"), worker_index=index, progress=progress, max_trials=max_trials
    )
    print(f"worker: {ran} trials")
    return 0


def cmd_best(args: Sequence[str]) -> int:
    """Ranked sites of a study; with a train/held-out split, the top sites judged on held-out prompts."""
    run_best(args)
    return 0


def run_best(args: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``meminject best``'s work (printed and written as the command does); returns its table
    and the held-out report (None when there was no held-out check)."""
    settings, top, distinct, heldout, controls, n_boot = _best_settings(args)
    study = load_study(settings.get("study"), settings.get("storage"))
    name = study.study_name
    spec = stored_spec(study)
    check_values(study)  # a corrupt value would rank first
    ranked = ranked_sites(study)
    multi = spec is not None and spec.multi and not ranked.empty
    table, unit = _shown_sites(ranked, spec, multi, distinct)
    base = load_run_config(spec.overrides) if spec else None
    lower = base is not None and base.model.dtype != "float32"
    rechecked = lower and not multi and not table.empty  # a lower-precision sweep ranks; float32 decides its top sites
    if rechecked:
        table = float32_recheck(spec, table, base.model.dtype, top)
    if spec is not None:  # a top τ at the end of its searched range is marked, and said below
        table = with_edges(table, spec.params)
    path = outputs_dir("best") / f"{name}{'-pareto' if multi else '-distinct' if distinct else ''}.csv"
    table.to_csv(path, index=False)
    print(
        f"study {name}: {len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))} complete trials, {len(table)} {unit}"
    )
    if rechecked:
        print(
            f"note: the sweep ran in {base.model.dtype}; its top {min(top, len(table))} sites were re-evaluated in float32 on the same prompts and are ranked by that (column {base.model.dtype}: the sweep's value; sweep_rank: its rank)"
        )
    print(format_table(table.head(top)))
    for line in edge_notes(table.head(top), spec.params) if spec is not None else []:
        print(line)
    if several_models(table):  # a model axis: each model's own ranking too, and its own held-out check
        print(f"\nwithin each model (top {top}):\n{format_per_model(table, top)}")
    print(f"table: {path}")
    parent = study.user_attrs.get(ATTR_PARENT)
    tracker = _parent_tracker(base, parent, name) if base is not None and parent else None
    if tracker is not None:
        tracker.log_file(parent, path)
    has_split = base is not None and base.data.split is not None and base.data.part == "train"
    if heldout == "true" and not has_split:
        raise ConfigError(
            f"study {name!r} was not run on a train part (data.split, data.part=train); held-out evaluation is impossible"
        )
    if table.empty or heldout == "false" or not has_split:
        return table, None
    runner = TrialRunner()  # one clean pass per model for the held-out check and the depth figure
    report, report_path = _heldout_check(name, spec, base, per_model_top(table, top), controls, n_boot, multi, runner)
    figure = pareto_figure(ranked, report, outputs_dir("figures", name) / "pareto_front.png", spec) if multi else None
    if figure is not None:
        print(f"figure: {figure}")
    if tracker is not None and parent:
        _log_heldout(tracker, parent, report, report_path, figure)
    specific = _specific_figure(name, ranked, report)
    if specific is not None and tracker is not None and parent:
        tracker.log_file(parent, specific, "figures")
    depth = _depth_figure(name, spec, ranked, report, runner, settings.get("depth_figure", "auto"))
    if depth is not None and tracker is not None and parent:
        tracker.log_file(parent, depth, "figures")
    return table, report


def _specific_figure(name: str, ranked: pd.DataFrame, report: pd.DataFrame | None) -> Path | None:
    """Correct against shuffled gain by layer, when the study measured the specific gain."""
    curve = specific_curve(ranked)
    if curve.empty:
        return None
    title = f"{name}\ncorrect vs another prompt's memory, by layer (best τ for the specific gain on the train part)"
    path = specific_figure(curve, report, outputs_dir("figures", name) / "specific_by_layer.png", title)
    print(f"figure: {path}")
    return path


def _depth_figure(name: str, spec: SweepSpec, ranked: pd.DataFrame, report: pd.DataFrame, runner, setting: str):
    """The cross-model figure (gain against relative depth, held-out too), when the study searched
    where the memory goes (a layer or depth axis) over at least 2 layers; ``depth_figure=false`` skips it."""
    searched = {"injection.layer", "injection.depth"} & set(spec.params)
    curve = depth_curve(ranked)
    wanted = setting == "true" or (setting == "auto" and searched and curve.groupby("model").size().max() >= 2)
    if curve.empty or not wanted:
        return None
    print(f"\nheld-out gain of the best τ at each of {len(curve)} layers (the depth figure):", file=sys.stderr)
    # in float32, as the held-out check: a bfloat16 line put best's judged sites (crosses) off it
    precise = [o for o in spec.overrides if not o.startswith("model.dtype=")] + ["model.dtype=float32"]
    curve["heldout_gain"] = heldout_gains(precise, curve, list(spec.params), runner)
    curve.to_csv(outputs_dir("best") / f"{name}-depth.csv", index=False)
    models = ", ".join(str(m) for m in curve["model"].unique())
    title = f"{name}\nmean gain by relative depth: {models} (best τ per layer on the train part)"
    path = depth_figure(curve, report, outputs_dir("figures", name) / "gain_by_depth.png", title)
    print(f"figure: {path}")
    return path


def _parent_tracker(base, parent: str, name: str) -> Tracker | None:
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


def _best_settings(args: Sequence[str]) -> tuple[dict[str, str], int, bool, str, list[str], int]:
    """best's keys, each checked before any work: (settings, top, distinct, heldout, controls, bootstrap)."""
    settings, _ = parse_settings(args, BEST_SETTINGS, "best")
    top = as_positive_int(settings.get("top", 10), "top")
    distinct = as_bool(settings.get("distinct", "true"), "distinct")
    heldout = settings.get("heldout", "auto").lower()
    if heldout not in ("auto", "true", "false"):
        raise ConfigError(f"heldout={heldout!r}: use true, false or auto")
    controls = [c for c in settings.get("controls", "pos,pos_matched,random_vector").split(",") if c]
    check_controls(controls)  # refused before any work
    n_boot = as_positive_int(settings.get("bootstrap", 2000), "bootstrap")
    return settings, top, distinct, heldout, controls, n_boot


def _shown_sites(ranked: pd.DataFrame, spec: SweepSpec | None, multi: bool, distinct: bool) -> tuple[pd.DataFrame, str]:
    """The sites best shows, and what it calls them."""
    if multi:  # every Pareto-optimal site: each τ of a site is its own trade-off
        table = ranked[ranked["pareto"]].reset_index(drop=True)
        table["rank"] = range(1, len(table) + 1)
        return (
            table,
            f"Pareto-optimal sites ({', '.join(f'{d} {o}' for o, d in zip(spec.all_objectives(), spec.all_directions()))})",
        )
    if distinct:
        return distinct_sites(ranked), "sites (best τ of each)"
    return ranked, "distinct sites"


def _heldout_check(
    name: str, spec: SweepSpec, base, sites: pd.DataFrame, controls: list[str], n_boot: int, multi: bool, runner=None
) -> tuple[pd.DataFrame, Path]:
    """Judge the top sites on the held-out prompts (in float32); write and print the report."""
    overrides = list(spec.overrides)
    if base.model.dtype != "float32":  # the verdicts are float32's too
        print(f"note: the sweep ran in {base.model.dtype}; the held-out check re-evaluates its sites in float32")
        overrides.append("model.dtype=float32")
    report = heldout_report(
        overrides, sites, controls=controls, n_boot=n_boot, seed=spec.seed, axes=list(spec.params), runner=runner
    )
    report_path = outputs_dir("best") / f"{name}-heldout.csv"
    report.to_csv(report_path, index=False)
    print(
        f"\nheld-out check of the top {len(report)} sites ({int(report['heldout_prompts'].iloc[0])} held-out prompts; 95% bootstrap intervals):"
    )
    print(format_heldout(report, controls, with_damage=multi))
    print(f"held-out table: {report_path}")
    return report, report_path


def _log_heldout(tracker: Tracker, parent: str, report: pd.DataFrame, report_path: Path, figure: Path | None) -> None:
    """The held-out report, its figure and one verdict per site on the MLflow parent run."""
    tracker.log_file(parent, report_path)
    if figure is not None:
        tracker.log_file(parent, figure, "figures")
    verdicts = [
        f"{int(r['rank'])}: {r['model'] + ' ' if several_models(report) else ''}L{r['injection.layer']} τ={float(r['injection.tweak']):.3g} {r['memory.encoding']}/{r['memory.type']}: {r['verdict']}"
        for _, r in report.iterrows()
    ]
    tracker.client.set_tag(parent, TAG_VERDICTS, "\n".join(verdicts)[:5000])
    tracker.client.set_tag(parent, TAG_HOLDS, str(int((report["verdict"] == "holds").sum())))
