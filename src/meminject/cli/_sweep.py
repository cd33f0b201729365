"""The sweep and worker commands: each parses its keys, calls one function, and always
closes what it opened (the parent run ends FINISHED, RUNNING for a budget left to other
workers, KILLED after Ctrl-C/SIGTERM, or FAILED)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Sequence

from optuna.trial import TrialState

from ..core._errors import ConfigError, first_line
from ..store._recovery import DEFAULT_HEARTBEAT
from ..tracking._tracker import Tracker, redact, tracking_uri
from ._repair import REPAIR_SETTINGS
from ..runner._parent import best_csv, start_parent_run
from ..selection._final import finalize
from ..selection._results import ranked_sites
from ..views._tables import format_table
from ..search._settings import SweepSpec, load_sweep, presets
from ..search._keys import (
    BEST_SETTINGS,
    SWEEP_SETTINGS,
    WORKER_SETTINGS,
    as_bool,
    as_non_negative_int,
    as_positive_int,
    parse_settings,
)
from ..runner._spawn import die_with_parent, spawn_workers
from ..store._storage import default_storage_url
from ..search._study import ATTR_PARENT, budget, budget_line, counted, name_study, preflight, prepare_study
from ..runner._run import signals_held
from ..runner._ask import repeats_of
from ..runner._worker import run_worker

if TYPE_CHECKING:
    pass

__all__ = ["cmd_sweep", "cmd_worker", "help_epilog"]


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
