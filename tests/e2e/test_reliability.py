"""Reliability: a worker killed mid-trial (heartbeats, retry), determinism across runs and
worker counts, and the per-trial memory of a long-running worker (tiny model)."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY, meminject_experiments, run_cli, start_cli
from meminject.store._storage import open_storage


def _study(storage: Path, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(str(storage)))
    except KeyError:
        return None


def _trial_runs(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs(meminject_experiments(client), max_results=10_000)
    return [r for r in runs if r.data.tags.get("meminject.role") == "trial"], [
        r for r in runs if r.data.tags.get("meminject.role") == "sweep"
    ]


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


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_failed_rerun_once_and_its_run_closed(tmp_path):
    storage, tracking = tmp_path / "optuna.journal", f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = [
        "sweep=paper_grid",
        "study=crash",
        "injection.tweak=choice(1,2,3,4)",
        "memory.encoding=choice(unembed)",
        "perf.trials_per_forward=1",
    ]
    survivor = start_cli(
        "sweep",
        *TINY,
        *grid,
        f"storage={storage}",
        f"tracking.uri={tracking}",
        "heartbeat=1",
        "grace=5",
        cwd=tmp_path,
        trial_delay_s=1.5,
    )
    victim = None
    try:
        _wait_for(
            lambda: (s := _study(storage, "crash")) is not None and s.user_attrs.get("meminject.mlflow_parent_run_id"),
            120,
            "the study",
            [survivor],
        )
        victim = start_cli(
            "worker",
            "study=crash",
            f"storage={storage}",
            "worker_index=1",
            "progress=false",
            cwd=tmp_path,
            trial_delay_s=1.5,
        )

        def victim_is_mid_trial() -> bool:
            running = _study(storage, "crash").get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            return any(t.user_attrs.get("worker_index") == 1 and t.user_attrs.get("mlflow_run_id") for t in running)

        _wait_for(victim_is_mid_trial, 120, "the second worker to start a trial", [victim])
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = [
            t
            for t in _study(storage, "crash").get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker_index") == 1
        ]
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
    assert len(points) == 3 * 4 and set(points.values()) == {1}  # every point once, none twice
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


# --------------------------------------------------------------------------- trust


def test_downloads_are_checked_against_the_pinned_sha256(tmp_path, monkeypatch):
    """A dataset served over HTTP (loopback): a wrong digest is refused and nothing is cached;
    the right one is cached, and a cached copy altered later is refused."""
    import functools
    import hashlib
    import http.server
    import threading

    from meminject.config import load_run_config as compose_config
    from meminject.data._dataset import load_dataset
    from meminject.core._errors import DataError

    served = tmp_path / "served"
    served.mkdir()
    body = (
        "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"
        "Paris is the capital of,The city of lights is the capital of,Paris,The city of lights,France\n"
    ).encode()
    (served / "prompts.csv").write_bytes(body)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MEMINJECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEMINJECT_DATA_DIR", raising=False)
    url = f"http://127.0.0.1:{server.server_address[1]}/prompts.csv"
    good = hashlib.sha256(body).hexdigest()

    def data_cfg(sha: str):
        return compose_config(
            [
                "model=tiny",
                "data=handwritten",
                "data.file=prompts.csv",
                f"data.url={url}",
                f"data.sha256={sha}",
                "data.part=all",
            ]
        ).data

    cached = tmp_path / "cache" / "data" / "prompts.csv"
    try:
        with pytest.raises(DataError, match="expected 0000.*refusing"):
            load_dataset(data_cfg("0" * 64))
        assert not cached.exists() and not list(cached.parent.glob("*partial*"))
        assert load_dataset(data_cfg(good)).frame["answer"].tolist() == [" France"]
        assert cached.read_bytes() == body
        cached.write_bytes(body.replace(b"France", b"Spain"))
        with pytest.raises(DataError, match="delete it to download it again"):
            load_dataset(data_cfg(good))
    finally:
        server.shutdown()


def test_cached_model_weights_are_safetensors_not_pickle():
    from meminject.config import load_run_config as compose_config
    from meminject.engine._models import load_model
    from meminject.core._paths import cache_dir

    load_model(compose_config(["model=smollm2-135m", "model.device=cpu", "model.weights=raw"]).model)
    folder = cache_dir() / "models" / "smollm2-135m"
    names = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], names
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert len(list(handle.keys())) > 100


# --------------------------------------------------------------------------- endurance


@pytest.mark.slow
def test_endurance_1000_trials_on_4_workers_record_each_trial_once_without_leaking(tmp_path):
    """1,000 trials of the tiny model on 4 local workers: every trial complete and tracked
    once, and each worker's resident memory at the end within 10% of its value at trial 100."""
    storage, tracking = tmp_path / "optuna.journal", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "sweep",
        *TINY,
        "sweep=tpe",
        "sampler=random",
        "n_trials=1000",
        "workers=4",
        "study=endurance",
        f"storage={storage}",
        f"tracking.uri={tracking}",
    ]
    proc = run_cli(*args, cwd=tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]

    study = _study(storage, "endurance")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 1000
    # Nothing failed: the only other trials are slots given back unrun when two workers asked
    # for the last one of the shared budget at once (FAIL, marked surplus, never run).
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(
        t.state == TrialState.FAIL
        and t.user_attrs.get("meminject.surplus") == "over budget"
        and "mlflow_run_id" not in t.user_attrs
        for t in others
    ), others
    trial_runs, parents = _trial_runs(tracking)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    numbers = Counter(int(r.data.tags["meminject.trial_number"]) for r in trial_runs if r.info.status == "FINISHED")
    assert numbers == Counter(t.number for t in complete)  # each trial tracked exactly once
    assert len(trial_runs) == 1000

    by_worker: dict[int, list] = {}
    for t in sorted(complete, key=lambda t: t.datetime_complete):
        by_worker.setdefault(t.user_attrs["worker_index"], []).append(t)
    assert sorted(by_worker) == [0, 1, 2, 3]
    order = {t.number: i for i, t in enumerate(sorted(complete, key=lambda t: t.datetime_complete))}
    growth = {}
    for worker, trials in by_worker.items():
        at_100 = min(trials, key=lambda t: abs(order[t.number] - 99))  # this worker, when the study had ~100 trials
        last = trials[-1]
        growth[worker] = last.user_attrs["worker_rss_mb"] / at_100.user_attrs["worker_rss_mb"] - 1
    print(
        "resident memory growth per worker from trial 100 to 1000:", {w: f"{g:+.1%}" for w, g in sorted(growth.items())}
    )
    assert all(g <= 0.10 for g in growth.values()), growth


def test_out_of_memory_fails_the_trial_cleanly_and_the_worker_goes_on_with_smaller_batches(
    tmp_path, monkeypatch, caplog
):
    """A device OOM (simulated: this machine has no GPU) in a trial: the trial FAILs with the
    reason, its MLflow run is closed FAILED, its grid point is re-run, and later trials use
    half the batch budget."""
    import torch

    from meminject.cli import main
    from meminject.engine._evaluation import Evaluator

    original = Evaluator.evaluate_many
    budgets: list[int] = []

    def evaluate_many(self, items, monitors=None, **kwargs):
        budgets.append(self.max_batch_tokens)
        if self.max_batch_tokens >= 2048:  # the default budget "does not fit"
            torch.empty(1024)  # something was allocated before the failure
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, items, monitors, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate_many", evaluate_many)
    monkeypatch.chdir(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(
        [
            "sweep",
            *TINY,
            "sweep=paper_grid",
            "study=oom",
            "injection.tweak=choice(1,2)",
            "memory.encoding=choice(unembed)",
            "perf.max_batch_tokens=2048",
            f"storage={tmp_path / 'optuna.journal'}",
            f"tracking.uri={tracking}",
        ]
    )
    assert code == 0
    study = _study(tmp_path / "optuna.journal", "oom")
    failed = study.get_trials(states=(TrialState.FAIL,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(failed) == 1 and "out of memory" in failed[0].user_attrs["failure"]
    assert Counter(json.dumps(t.params, sort_keys=True) for t in complete) == Counter(
        json.dumps({"injection.layer": layer, "injection.tweak": tweak, "memory.encoding": "unembed"}, sort_keys=True)
        for layer in range(3)
        for tweak in (1, 2)
    )
    assert budgets[0] == 2048 and set(budgets[1:]) == {1024}
    trial_runs, _ = _trial_runs(tracking)
    status = {int(r.data.tags["meminject.trial_number"]): r.info.status for r in trial_runs}
    assert status[failed[0].number] == "FAILED" and all(status[t.number] == "FINISHED" for t in complete)
    assert any("out of memory" in r.message for r in caplog.records)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(
    "params",
    [
        {"injection.layer": 2, "injection.tweak": 3.25, "memory.encoding": "embed"},
        {
            "injection.layer": 0,
            "injection.tweak": 4.0,
            "memory.type": "pos",
            "injection.site": "head_subspace",
            "injection.head": 1,
        },
        {"injection.layer": 1, "memory.type": "random", "memory.draw": 2},
    ],
)
def test_a_workers_fast_trial_config_equals_the_full_compose(params):
    from meminject.config import build_run_config
    from meminject.config._compose import compose_config
    from meminject.runner._trial import trial_config

    overrides = [*TINY, "data.part=train", "seed=3", "memory.pos=verb"]
    fast = trial_config(overrides, params)
    full = build_run_config(compose_config([*overrides, *(f"{k}={v}" for k, v in params.items())]))
    assert fast == full and fast.to_container() == full.to_container()
    assert trial_config(overrides, {"injection.layer": 0}).injection.layer == 0  # the cached base is not changed


@pytest.mark.slow
def test_the_same_config_and_seed_give_identical_per_prompt_results_across_processes(tmp_path):
    """Two separate `meminject eval` processes with a seeded control memory: byte-identical tables."""
    tables = []
    for name in ("a", "b"):
        proc = run_cli(
            "eval",
            *TINY,
            "injection.layer=1",
            "injection.tweak=3",
            "memory=pos",
            "seed=11",
            "tracking.enabled=false",
            f"output_dir={tmp_path / name}",
            cwd=tmp_path,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        tables.append((tmp_path / name / "per_prompt.csv").read_bytes())
    assert tables[0] == tables[1]
