"""tracking.writer=process: a writer process writes each trial's run after the trial is told;
the same runs as the inline path, and a writer that fails or dies loses no result."""

from __future__ import annotations

import mlflow
from conftest import load, meminject_experiments, sweep_args

from meminject.cli import main


def _runs(tmp_path, study: str) -> dict[int, object]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(meminject_experiments(client, study), filter_string="tags.`meminject.role` = 'trial'")
    return {int(r.data.tags["meminject.trial_number"]): r for r in runs}


def test_the_writer_process_writes_the_same_runs_as_the_inline_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for study, writer in (("p", "process"), ("i", "inline")):
        code = main(sweep_args(tmp_path, f"study={study}", "n_trials=4", f"tracking.writer={writer}", "seed=3"))
        assert code == 0, capsys.readouterr().err
    process, inline = _runs(tmp_path, "p"), _runs(tmp_path, "i")
    trials = {t.number: t for t in load(tmp_path, "p").trials}
    assert sorted(process) == sorted(inline) == [0, 1, 2, 3]
    for number, run in process.items():
        twin = inline[number]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == twin.info.run_name
        assert run.data.metrics["mean_gain"] == trials[number].value
        shared = set(run.data.metrics) - {"trial_seconds", "worker_rss_mb"}
        assert {k: run.data.metrics[k] for k in shared} == {k: twin.data.metrics[k] for k in shared}
        assert set(run.data.params) == set(twin.data.params)
        assert run.info.start_time <= run.info.end_time
        assert "mlflow_run_id" not in trials[number].user_attrs  # the run is written after the tell
        assert trials[number].user_attrs["meminject.key"]


def test_a_writer_that_dies_with_runs_pending_loses_none_the_resume_writes_them(tmp_path, capsys, monkeypatch):
    """The writer process is killed before it writes anything: the worker stops with one line,
    every told trial stays in the study, and the rerun writes all their runs."""
    import os
    import signal

    from meminject.runner import _writer

    real = _writer.RunWriter.submit

    def submit_then_kill(self, record):
        real(self, record)
        if self._process.is_alive():
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.join()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_writer.RunWriter, "submit", submit_then_kill)
    code = main(sweep_args(tmp_path, "study=k", "n_trials=3", "tracking.writer=process"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "are saved in the study" in err and "rerun the same command" in err and "Traceback" not in err
    told = [t.number for t in load(tmp_path, "k").trials if t.state.name == "COMPLETE"]
    assert told and not any(r.info.status == "FINISHED" for r in _runs(tmp_path, "k").values())

    monkeypatch.setattr(_writer.RunWriter, "submit", real)
    code = main(sweep_args(tmp_path, "study=k", "n_trials=3", "tracking.writer=process"))
    assert code == 0, capsys.readouterr().err
    runs = _runs(tmp_path, "k")
    assert all(runs[n].info.status == "FINISHED" and "mean_gain" in runs[n].data.metrics for n in told)
    assert sorted(runs) == [0, 1, 2]
