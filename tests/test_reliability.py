"""Reliability: a worker killed mid-trial (heartbeats, retry), determinism across runs and
worker counts, and the per-trial memory of a long-running worker (tiny model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from meminject.search import open_storage

TINY = ["model=tiny", "model.device=cpu", "data.limit=6"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def _meminject(*args: str, cwd: Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "meminject", *args], cwd=cwd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _study(storage: Path, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(str(storage)))
    except KeyError:
        return None


def _trial_runs(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("meminject")
    runs = client.search_runs([experiment.experiment_id], max_results=10_000)
    return [r for r in runs if r.data.tags.get("meminject.role") == "trial"], [r for r in runs if r.data.tags.get("meminject.role") == "sweep"]


def _wait_for(condition, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: a process exited early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_killed_mid_trial_is_failed_rerun_once_and_its_run_closed(tmp_path):
    storage, tracking = tmp_path / "optuna.journal", f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = ["sweep=paper_grid", "study=crash", "injection.tweak=choice(1,2,3)", "memory.encoding=choice(unembed)", "perf.trials_per_forward=1"]
    slow = _env(MEMINJECT_TRIAL_DELAY_S="1.5")
    survivor = _meminject("sweep", *TINY, *grid, f"storage={storage}", f"tracking.uri={tracking}", "heartbeat=1", "grace=3", cwd=tmp_path, env=slow)
    victim = None
    try:
        _wait_for(lambda: (s := _study(storage, "crash")) is not None and s.user_attrs.get("meminject.mlflow_parent_run_id"), 120, "the study", [survivor])
        victim = _meminject("worker", "study=crash", f"storage={storage}", "worker_index=1", "progress=false", cwd=tmp_path, env=slow)

        def victim_is_mid_trial() -> bool:
            running = _study(storage, "crash").get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            return any(t.user_attrs.get("worker_index") == 1 and t.user_attrs.get("mlflow_run_id") for t in running)

        _wait_for(victim_is_mid_trial, 120, "the second worker to start a trial", [victim])
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = [t for t in _study(storage, "crash").get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.user_attrs.get("worker_index") == 1]
        assert len(killed) == 1
        out, _ = survivor.communicate(timeout=300)
        assert survivor.returncode == 0, out[-3000:]
    finally:
        for proc in (survivor, victim):
            if proc is not None and proc.poll() is None:
                proc.kill()

    study = _study(storage, "crash")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    points = Counter(json.dumps(t.params, sort_keys=True) for t in complete)
    assert len(points) == 3 * 3 and set(points.values()) == {1}  # every point once, none twice
    dead = study.trials[killed[0].number]
    assert dead.state == TrialState.FAIL
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].params == dead.params and retries[0].user_attrs["worker_index"] == 0

    trial_runs, parents = _trial_runs(tracking)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parents[0].info.run_id}
    finished = [r for r in trial_runs if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["meminject.trial_number"]) for r in finished) == sorted(t.number for t in complete)
    by_id = {r.info.run_id: r for r in trial_runs}
    dead_run = by_id[dead.user_attrs["mlflow_run_id"]]
    assert dead_run.info.status == "FAILED" and "heartbeat" in dead_run.data.tags["meminject.failure"]
    assert not [r for r in trial_runs if r.info.status == "RUNNING"]
