"""Sweeps on the tiny model: grid coverage with 1 and 2 workers, TPE reproducibility,
the collapsed head axis, resume after an interrupt, and refusals before any trial."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, complete_points, load, mlflow_runs, run_cli, start_cli, sweep_args, without_stages
from meminject.cli import main
from meminject.store._storage import open_storage


def test_grid_runs_every_point_exactly_once_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(
        sweep_args(
            tmp_path,
            "sweep=paper_grid",
            "study=grid1",
            "injection.tweak=choice(1,2)",
            "memory.encoding=choice(unembed,embed)",
        )
    )
    assert code == 0, capsys.readouterr().err
    study = load(tmp_path, "grid1")
    points = complete_points(study)
    assert len(points) == 3 * 2 * 2 and set(points.values()) == {1}
    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("meminject.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("meminject.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 12
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    # Optuna and MLflow agree trial by trial.
    by_number = {int(r.data.tags["meminject.trial_number"]): r for r in trials}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        run = by_number[t.number]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["mean_gain"] == pytest.approx(t.value)
        assert int(run.data.params["injection.layer"]) == t.params["injection.layer"]
    assert (tmp_path / "outputs" / "best" / "grid1.csv").exists()
    # rerunning a finished grid runs nothing more
    assert (
        main(
            sweep_args(
                tmp_path,
                "sweep=paper_grid",
                "study=grid1",
                "injection.tweak=choice(1,2)",
                "memory.encoding=choice(unembed,embed)",
            )
        )
        == 0
    )
    assert len(load(tmp_path, "grid1").get_trials()) == 12


@pytest.mark.slow
def test_grid_with_two_worker_processes_has_no_duplicates(tmp_path):
    args = sweep_args(
        tmp_path,
        "sweep=paper_grid",
        "study=grid2",
        "workers=2",
        "injection.tweak=choice(1,2,3)",
        "memory.encoding=choice(unembed,embed)",
    )
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path, "grid2")
    points = complete_points(study)
    assert len(points) == 3 * 3 * 2 and set(points.values()) == {1}
    trial_runs = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("meminject.role") == "trial"]
    assert len(trial_runs) == 18 and all(r.info.status == "FINISHED" for r in trial_runs)
    assert len({r.data.tags["meminject.trial_number"] for r in trial_runs}) == 18


@pytest.mark.slow
def test_grid_table_is_the_same_with_one_or_two_workers(tmp_path):
    one = load_table_for(tmp_path / "one", workers=1)
    two = load_table_for(tmp_path / "two", workers=2)
    assert one.keys() == two.keys()
    # workers split the CPU threads, so matmul reductions may round differently (~1e-13)
    for point, gain in one.items():
        assert two[point] == pytest.approx(gain, abs=1e-9)


def load_table_for(folder: Path, workers: int) -> dict:
    folder.mkdir()
    args = sweep_args(
        folder,
        "sweep=paper_grid",
        "study=g",
        f"workers={workers}",
        "injection.tweak=choice(1,4)",
        "memory.encoding=choice(unembed)",
        "tracking.enabled=false",
    )
    proc = run_cli(*args, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        json.dumps(t.params, sort_keys=True): t.value
        for t in load(folder, "g").get_trials(states=(TrialState.COMPLETE,))
    }


def test_tpe_with_fixed_seed_is_reproducible(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    histories = []
    for name in ("tpe_a", "tpe_b"):
        assert main(sweep_args(tmp_path, "sweep=tpe", f"study={name}", "n_trials=8", "tracking.enabled=false")) == 0
        study = load(tmp_path, name)
        histories.append([(t.params, t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))])
    assert len(histories[0]) == 8
    assert histories[0] == histories[1]


def test_tpe_never_runs_a_point_twice_and_stops_when_the_space_is_used_up(tmp_path, monkeypatch, capsys, caplog):
    """TPE over 3 × 2 discrete points with a budget of 10: each point runs once (a point the
    study holds is given back unrun, at no budget), then the worker says the space is used up."""
    monkeypatch.chdir(tmp_path)
    args = sweep_args(
        tmp_path,
        "sweep=tpe",
        "study=tpe_small",
        "n_trials=10",
        "tracking.enabled=false",
        "injection.tweak=choice(1,2)",
        "injection.layer=range(0, all)",
        "memory.encoding=unembed",
    )
    with caplog.at_level("WARNING", logger="meminject"):
        assert main(args) == 0, capsys.readouterr().err
    study = load(tmp_path, "tpe_small")
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    points = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(points) == len(set(points)) == 6
    given_back = [t for t in study.get_trials(states=(TrialState.FAIL,)) if "meminject.surplus" in t.user_attrs]
    assert given_back and all(t.user_attrs["meminject.surplus"].startswith("duplicate of trial") for t in given_back)
    assert "every point of this search space looks evaluated" in caplog.text
    assert "sampled points already in the study were not run again" in capsys.readouterr().out


def test_head_axis_collapses_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert main(sweep_args(tmp_path, "sweep=head_demo", "study=heads", "tracking.enabled=false")) == 0
    study = load(tmp_path, "heads")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3 * 2  # layers × τ, not layers × heads × τ
    assert all("injection.head" not in t.params for t in trials)
    assert sum("head axis is degenerate" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow
def test_resume_after_sigint_ends_with_exactly_n_trials(tmp_path):
    args = sweep_args(tmp_path, "sweep=tpe", "study=resume", "n_trials=10", "data.limit=40")
    # Trials of the tiny model take ~0.1 s: slow them down so the SIGINT lands mid-sweep.
    # A shell's background job inherits SIGINT ignored (and so would the sweep): restore the default.
    proc = start_cli(
        *args,
        cwd=tmp_path,
        trial_delay_s=0.7,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    journal = tmp_path / "optuna.journal"
    while time.time() < deadline:
        if journal.exists():
            try:
                if len(load(tmp_path, "resume").get_trials(states=(TrialState.COMPLETE,))) >= 3:
                    break
            except KeyError:
                pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    interrupted = load(tmp_path, "resume")
    done_before = len(interrupted.get_trials(states=(TrialState.COMPLETE,)))
    assert 3 <= done_before < 10
    rerun = run_cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    study = load(tmp_path, "resume")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 10
    runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("meminject.role") == "sweep"]
    finished = [r for r in runs if r.data.tags.get("meminject.role") == "trial" and r.info.status == "FINISHED"]
    assert len(parents) == 1
    assert sorted(int(r.data.tags["meminject.trial_number"]) for r in finished) == sorted(t.number for t in complete)
    assert all(r.info.status != "RUNNING" for r in runs if r.data.tags.get("meminject.role") == "trial")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["sweep=nope"], "unknown sweep 'nope'"),
        (["sweep=tpe", "injection.layer=range(0, 9)"], "layer 3 is out of range"),
        (["sweep=tpe", "injection.tweak=interval(5, 1)"], "inverted interval"),
        (["sweep=paper_grid", "injection.tweak=interval(1, 5)"], "grid sampler needs discrete axes"),
        (["sweep=tpe", "n_trials=0"], "n_trials"),
        (["sweep=tpe", "sampler=cmaes"], "sampler='cmaes'"),
        (["sweep=tpe", "memory.encoding=choice(unembed, onehot)"], "memory.encoding='onehot'"),
        (["sweep=tpe", "injection.depth=3"], "injection.depth"),
    ],
)
def test_bad_sweep_configs_fail_before_any_trial(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    code = main(sweep_args(tmp_path, "tracking.enabled=false", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0], err
    journal = tmp_path / "optuna.journal"
    if journal.exists():
        storage = open_storage(str(journal))
        assert all(s.n_trials == 0 for s in optuna.get_all_study_summaries(storage))


def test_changed_search_space_under_the_same_study_name_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(sweep_args(tmp_path, "sweep=tpe", "study=same", "n_trials=2", "tracking.enabled=false")) == 0
    code = main(
        sweep_args(
            tmp_path,
            "sweep=tpe",
            "study=same",
            "n_trials=2",
            "tracking.enabled=false",
            "injection.tweak=interval(1, 3)",
        )
    )
    assert code == 2
    assert "exists with a different search space" in capsys.readouterr().err


def test_best_ranks_sites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            sweep_args(
                tmp_path,
                "sweep=paper_grid",
                "study=b",
                "injection.tweak=choice(1,3)",
                "memory.encoding=choice(unembed)",
            )
        )
        == 0
    )
    capsys.readouterr()
    assert main(["best", "study=b", f"storage={tmp_path / 'optuna.journal'}", "top=3", "distinct=false"]) == 0
    out = capsys.readouterr().out
    assert "6 complete trials, 6 distinct sites" in out
    import pandas as pd

    table = pd.read_csv(tmp_path / "outputs" / "best" / "b.csv")
    assert list(table["mean_gain"]) == sorted(table["mean_gain"], reverse=True)
    assert len(table) == 6
    # distinct=true (the default): the best τ of each layer, nothing else
    assert main(["best", "study=b", f"storage={tmp_path / 'optuna.journal'}"]) == 0
    assert "6 complete trials, 3 sites (best τ of each)" in capsys.readouterr().out
    distinct = pd.read_csv(tmp_path / "outputs" / "best" / "b-distinct.csv")
    expected = table.sort_values("mean_gain", ascending=False).groupby("injection.layer", sort=False).head(1)
    assert list(distinct["injection.layer"]) == list(expected["injection.layer"])
    assert list(distinct["injection.tweak"]) == list(expected["injection.tweak"]) and list(distinct["rank"]) == [
        1,
        2,
        3,
    ]


def test_stacked_trials_give_the_same_grid_as_one_at_a_time(tmp_path, monkeypatch):
    """perf.trials_per_forward>1: the worker takes several queued points and stacks same-layer
    ones in one pass; every trial's metrics equal the one-at-a-time sweep's."""
    monkeypatch.chdir(tmp_path)
    tables = {}
    for per_forward in (1, 4):
        name = f"stack{per_forward}"
        args = sweep_args(
            tmp_path,
            "sweep=paper_grid",
            f"study={name}",
            "injection.tweak=choice(1,2,5)",
            "memory.encoding=choice(unembed,layer)",
            f"perf.trials_per_forward={per_forward}",
        )
        assert main(args) == 0
        study = load(tmp_path, name)
        tables[per_forward] = {
            json.dumps(t.params, sort_keys=True): (t.value, t.user_attrs["mean_prob_after"])
            for t in study.get_trials(states=(TrialState.COMPLETE,))
        }
        runs = mlflow_runs(tmp_path, "trial", study=name)  # each study has its own experiment: its runs only
        assert len(runs) == 3 * 3 * 2 and {r.data.tags.get("meminject.study") for r in runs} == {name}
        stacked = {int(r.data.params["trials_per_forward"]) for r in runs}
        assert max(stacked) == per_forward, f"trials_per_forward={per_forward}: runs were stacked {stacked}"
    assert tables[1].keys() == tables[4].keys() and len(tables[1]) == 3 * 3 * 2
    for point, (gain, after) in tables[1].items():
        assert tables[4][point][0] == pytest.approx(gain, abs=1e-9)
        assert tables[4][point][1] == pytest.approx(after, abs=1e-9)


def test_every_trial_run_logs_the_whole_resolved_config_and_its_hook(tmp_path, monkeypatch):
    """The params of a trial run are the flattened resolved config (redacted) plus the hook:
    every key that differs between two trials, and every key at all, is there with its value."""
    from meminject.search._settings import SweepSpec
    from meminject.runner._trial import trial_config
    from meminject.search._study import ATTR_SPEC

    monkeypatch.chdir(tmp_path)
    args = sweep_args(
        tmp_path,
        "sweep=head_subspace",
        "study=params",
        "n_trials=3",
        "memory.draw=3",
        "metric.answer=sequence",
        "data.split=0.6",
    )
    assert main(args) == 0
    study = load(tmp_path, "params")
    spec = SweepSpec.from_json(study.user_attrs[ATTR_SPEC])
    runs = {int(r.data.tags["meminject.trial_number"]): r for r in mlflow_runs(tmp_path, "trial")}
    configs = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        config = {k: str(v) for k, v in trial_config(spec.overrides, t.params).flat().items()}
        params = runs[t.number].data.params
        missing = sorted(set(config) - set(params))
        assert not missing, f"trial {t.number}: config keys not logged: {missing}"
        assert {k: params[k] for k in config} == config
        assert params["hook"] == f"blocks.{t.params['injection.layer']}.hook_attn_out"
        configs[t.number] = config
    first, *others = configs.values()
    differing = {k for other in others for k in first if first[k] != other.get(k)}
    assert {"injection.layer", "injection.head", "injection.tweak"} & differing
    for key in ("injection.scale", "metric.answer", "memory.draw", "model.weights", "data.split"):
        assert key in first
    assert (
        first["injection.scale"] == "relative" and first["memory.draw"] == "3" and first["metric.answer"] == "sequence"
    )


def test_best_names_a_study_when_the_storage_holds_several(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("one", "two"):
        assert main(sweep_args(tmp_path, "sweep=tpe", f"study={name}", "n_trials=1", "tracking.enabled=false")) == 0
    capsys.readouterr()
    assert main(["best", f"storage={tmp_path / 'optuna.journal'}"]) == 2
    err = capsys.readouterr().err
    assert "holds 2 studies; name one with study=NAME: one, two" in err


def test_a_tracking_store_failing_mid_sweep_keeps_results_in_optuna_and_writes_the_runs_on_resume(
    tmp_path, monkeypatch, capsys
):
    """MLflow fails after its retries on the 3rd trial (a lock held too long, a full disk): the
    computed results stay COMPLETE in Optuna, the user gets one line, and the rerun writes the
    missing runs from the study, so every complete trial has exactly one FINISHED run."""
    from meminject.core._errors import TrackingError
    from meminject.tracking._tracker import Tracker

    monkeypatch.chdir(tmp_path)
    args = sweep_args(
        tmp_path,
        "sweep=paper_grid",
        "study=flaky",
        "injection.tweak=choice(1,2)",
        "memory.encoding=choice(unembed)",
        "progress=false",
    )
    real = Tracker.finish_trial
    calls = {"n": 0}

    def failing(self, run_id, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise TrackingError("tracking store sqlite:///x is locked (database is locked) after 60 s of retries")
        return real(self, run_id, *a, **k)

    monkeypatch.setattr(Tracker, "finish_trial", failing)
    assert main(args) == 2
    err = without_stages(capsys.readouterr().err.strip().splitlines())
    assert len(err) == 1 and "are saved in the study, but MLflow" in err[0] and "rerun the same command" in err[0], err
    study = load(tmp_path, "flaky")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3  # the third result was kept
    monkeypatch.setattr(Tracker, "finish_trial", real)
    assert main(args) == 0
    capsys.readouterr()
    study = load(tmp_path, "flaky")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3 * 2
    runs = mlflow_runs(tmp_path, "trial", study="flaky")  # the runs written on resume land in the study's experiment
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["meminject.trial_number"]) for r in finished) == sorted(t.number for t in complete)
    for run in finished:
        trial = study.trials[int(run.data.tags["meminject.trial_number"])]
        assert run.data.metrics["mean_gain"] == pytest.approx(trial.value)
        assert int(run.data.params["injection.layer"]) == trial.params["injection.layer"]
        assert (run.data.params["dataset"], run.data.params["n_prompts"]) == ("demo:train", "4")  # the table's columns
    assert [r.info.status for r in mlflow_runs(tmp_path, "sweep")] == ["FINISHED"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml")))
def test_every_preset_runs_its_first_trials_on_tiny(tmp_path, preset, shared_data, monkeypatch):
    # tiny has 3 layers: every preset searches them instead of its own (a real model's) layers,
    # or keeps its relative depth axis (which places the memory in tiny's layers itself).
    # In process, as a person's `meminject sweep` (a process each cost ~7 s of imports apiece)
    monkeypatch.chdir(tmp_path)
    by_depth = "injection.depth:" in (ROOT / "sweeps" / f"{preset}.yaml").read_text()
    layers = [] if by_depth else ["injection.layer=range(0, all)"]
    assert main(sweep_args(tmp_path, f"sweep={preset}", "study=p", "n_trials=3", "progress=false", *layers)) == 0
    study = load(tmp_path, "p")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert len(mlflow_runs(tmp_path, "trial")) == 3
