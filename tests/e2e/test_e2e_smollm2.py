"""End to end on the real SmolLM2: the `smoke` sweep with two worker processes, then
Optuna and MLflow compared trial by trial, and the best trial recomputed in-process."""

from __future__ import annotations

import os

import pytest
from optuna.trial import TrialState

from conftest import load, make_evaluator, mlflow_runs, run_cli


pytestmark = pytest.mark.slow  # servers, subprocesses or the real model: the full suite only


@pytest.mark.slow
def test_smoke_sweep_two_workers_optuna_and_mlflow_agree(tmp_path, smol):
    args = [
        "sweep",
        "sweep=smoke",
        "study=e2e",
        "workers=2",
        "n_trials=6",
        "data.limit=8",
        "model.device=cpu",
        "model.weights=raw",
        f"storage={tmp_path / 'optuna.journal'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    proc = run_cli(*args, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: 6 complete trials" in proc.stdout

    study = load(tmp_path, "e2e")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    assert {t.user_attrs["worker_index"] for t in complete} == {0, 1}, "both workers ran trials"

    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("meminject.role") == "sweep"]
    trial_runs = [r for r in runs if r.data.tags.get("meminject.role") == "trial" and r.info.status == "FINISHED"]
    assert len(parents) == 1
    assert len(trial_runs) == 6 and {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parents[0].info.run_id}
    by_number = {int(r.data.tags["meminject.trial_number"]): r for r in trial_runs}
    assert sorted(by_number) == sorted(t.number for t in complete)
    for trial in complete:
        run = by_number[trial.number]
        assert run.data.metrics["mean_gain"] == pytest.approx(trial.value, abs=1e-12)
        for key in ("mean_prob_before", "mean_prob_after", "mean_prob_explicit", "frac_improved"):
            assert run.data.metrics[key] == pytest.approx(trial.user_attrs[key], abs=1e-12)
        assert int(run.data.params["injection.layer"]) == trial.params["injection.layer"]
        assert float(run.data.params["injection.tweak"]) == pytest.approx(trial.params["injection.tweak"])
        assert run.data.params["memory.encoding"] == trial.params["memory.encoding"]
        assert run.data.params["model"] == "smollm2-135m"

    # The best trial's gain is what a fresh in-process evaluation of that point gives.
    from meminject.config import load_run_config as compose_config
    from meminject.data._dataset import load_dataset
    from meminject.engine._evaluation import InjectionSpec

    best = study.best_trial
    cfg = compose_config(
        [
            "model.weights=raw",
            "data.limit=8",
            "data.part=train",
            "memory.type=correct",
            "injection.scale=relative",  # the smoke preset's
            *(f"{k}={v}" for k, v in best.params.items()),
        ]
    )
    evaluator = make_evaluator(smol, load_dataset(cfg.data))
    result = evaluator.evaluate(InjectionSpec.from_config(cfg), cfg.memory)
    assert result.summary["mean_gain"] == pytest.approx(best.value, abs=1e-5)
    assert parents[0].data.params["n_trials"] == "6"
