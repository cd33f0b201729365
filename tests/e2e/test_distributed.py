"""The distributed engine for real: Optuna's RDB storage on a PostgreSQL server, an `mlflow
server` backed by PostgreSQL, three `meminject worker` processes started separately on one
grid study (tiny model); and no password anywhere in what is logged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import meminject_experiments, run_cli, start_cli
from servers import free_port, postgres_bin, postgres_cluster, require, wait_http

PASSWORD = "pg-Secret-4711"
TINY = ["model=tiny", "model.device=cpu", "data.limit=6"]


pytestmark = pytest.mark.slow  # servers, subprocesses or the real model: the full suite only


@pytest.fixture(scope="module")
def postgres():
    require(postgres_bin() is not None, "PostgreSQL (apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        require(False, "psycopg2 (pip install -e '.[postgres]')")
    with postgres_cluster(PASSWORD, ("optuna", "mlflow")) as auth:
        yield auth


DELAY_S = 1.0  # each worker's batch of trials waits this long (tests/_slow_meminject.py): all three get some


def test_three_workers_on_postgres_with_an_mlflow_server(postgres, tmp_path):
    from mlflow.tracking import MlflowClient

    storage = f"postgresql+psycopg2://{postgres}/optuna"
    port = free_port()
    mlflow_exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen(
        [
            mlflow_exe,
            "server",
            "--backend-store-uri",
            f"postgresql+psycopg2://{postgres}/mlflow",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    outputs: list[str] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=180, proc=server)
        tracking = f"http://127.0.0.1:{port}"
        sweep = [
            "sweep",
            *TINY,
            "sweep=paper_grid",
            "study=pg-grid",
            "injection.tweak=choice(1,2,3,4)",
            "memory.encoding=choice(unembed,embed)",
            f"storage={storage}",
            f"tracking.uri={tracking}",
            "workers=0",
        ]
        prepare = run_cli(*sweep, cwd=tmp_path, timeout=300)
        outputs.append(prepare.stdout + prepare.stderr)
        assert prepare.returncode == 0 and "prepared" in prepare.stdout, outputs[-1][-3000:]

        workers = [
            start_cli(
                "worker",
                "study=pg-grid",
                f"storage={storage}",
                f"worker_index={i}",
                "progress=false",
                cwd=tmp_path,
                trial_delay_s=DELAY_S,
            )
            for i in range(3)
        ]
        for worker in workers:
            out, _ = worker.communicate(timeout=600)
            outputs.append(out)
            assert worker.returncode == 0, out[-3000:]
            assert "Traceback" not in out and "error" not in out.lower(), out[-3000:]

        finish = run_cli(*sweep, cwd=tmp_path, timeout=300)
        outputs.append(finish.stdout + finish.stderr)
        assert finish.returncode == 0 and "study pg-grid is complete (24 trials): nothing to run" in finish.stdout, (
            outputs[-1][-3000:]
        )

        # Optuna on PostgreSQL: every grid point exactly once, nothing failed, all three workers ran trials.
        study = optuna.load_study(study_name="pg-grid", storage=storage)
        trials = study.get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        points = Counter(json.dumps(t.params, sort_keys=True) for t in complete)
        assert len(points) == 3 * 4 * 2 and set(points.values()) == {1}
        assert len(trials) == len(complete)
        assert {t.user_attrs["worker_index"] for t in complete} == {0, 1, 2}

        # MLflow server on PostgreSQL: one parent, one finished run per complete trial, all under it.
        client = MlflowClient(tracking_uri=tracking)
        runs = client.search_runs(meminject_experiments(client, "pg-grid"), max_results=10_000)
        parents = [r for r in runs if r.data.tags.get("meminject.role") == "sweep"]
        trial_runs = [r for r in runs if r.data.tags.get("meminject.role") == "trial"]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trial_runs)
        assert all(r.info.status == "FINISHED" for r in trial_runs)
        assert Counter(int(r.data.tags["meminject.trial_number"]) for r in trial_runs) == Counter(
            t.number for t in complete
        )
        by_number = {int(r.data.tags["meminject.trial_number"]): r for r in trial_runs}
        for t in complete:
            assert by_number[t.number].data.metrics["mean_gain"] == pytest.approx(t.value)
        figures = [a.path for a in client.list_artifacts(parents[0].info.run_id, "figures")]
        assert any(p.endswith(".png") for p in figures)

        # Secrets: the database password is in no param, tag, logged config or console line.
        assert (
            parents[0].data.params["storage"] == f"postgresql+psycopg2://meminject:***@{postgres.split('@')[1]}/optuna"
        )
        for run in runs:
            assert PASSWORD not in json.dumps([run.data.params, run.data.tags])
        parent_id = parents[0].info.run_id
        for name in ("sweep.json", "base_config.yaml"):
            text = Path(client.download_artifacts(parent_id, name, str(tmp_path / "dl"))).read_text()
            assert PASSWORD not in text
        assert "postgresql+psycopg2://meminject:***@" in "".join(outputs)
        assert not any(PASSWORD in out for out in outputs)
        for path in (tmp_path / "outputs").rglob("*"):
            if path.is_file() and path.suffix in (".csv", ".json", ".yaml", ".txt"):
                assert PASSWORD not in path.read_text(errors="replace"), path
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_two_workers_share_an_adaptive_study_and_plan_each_round_once(tmp_path):
    """sampler=adaptive with workers=2 on a journal file: every round is planned once, by one
    worker, from the rounds before it (re-planning them from the finished trials gives exactly
    the points each round holds), no point runs twice, and the study ends when the planner stops."""
    from meminject.search._adaptive import Cell, plan_round
    from meminject.search._grid import canonical_params
    from meminject.search._study import resolve_space, stored_spec
    from meminject.store._storage import load_study

    journal = tmp_path / "optuna.journal"
    run_cli(
        "sweep", "sweep=adaptive", *TINY, "data.limit=40", "prune_first=8", "study=ad2w", "workers=2",
        f"storage={journal}", "tracking.enabled=false", "progress=false", cwd=tmp_path, check=True,
    )  # fmt: skip
    study = load_study("ad2w", str(journal))
    spec = stored_spec(study)
    _, space = resolve_space(spec)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == len({canonical_params(t.params) for t in done})  # no point twice
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    rounds = sorted({t.user_attrs["meminject.round"] for t in done})
    assert rounds == list(range(len(rounds))) and len(rounds) >= 2
    workers = {t.user_attrs.get("worker_index") for t in done}
    for number in [*rounds, len(rounds)]:
        before = [Cell.of(t) for t in done if t.user_attrs["meminject.round"] < number]
        planned, points = plan_round(spec, space, before)
        held = {canonical_params(t.params) for t in done if t.user_attrs["meminject.round"] == number}
        assert planned == number and {canonical_params(p) for _, p in points} == held, number
    assert len(workers) == 2, workers  # both workers ran trials
