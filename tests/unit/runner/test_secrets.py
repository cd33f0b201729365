"""Secrets stay out of child command lines, the printed output and the study (issue #26).

A URL's password is never on a spawned process's argv (``ps`` shows argv to every user): a
worker gets the storage and tracking URLs in its environment, ``mlflow server`` its store in
MLflow's own variables. The study keeps the sweep's overrides redacted, and a resume takes
the secret from this process or from ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import json

import optuna
import pytest

from meminject.cli import main
from meminject.core import _secrets
from meminject.core._errors import ConfigError

TINY = ["model=tiny", "model.device=cpu", "data.limit=6"]
SECRET = "s3cr3t-Pw"
PG = f"postgresql+psycopg2://meminject:{SECRET}@127.0.0.1:1/mlflow"


class _FakeProcess:
    """What the spawners' callers read of a Popen: it has already exited, cleanly."""

    def __init__(self, cmd, **kwargs):
        self.cmd, self.env, self.pid, self.returncode = list(cmd), dict(kwargs.get("env") or {}), 0, 0

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0


@pytest.fixture()
def started(monkeypatch):
    """Every Popen of meminject's spawners, recorded instead of run."""
    import subprocess

    calls: list[_FakeProcess] = []

    def popen(cmd, **kwargs):
        calls.append(_FakeProcess(cmd, **kwargs))
        return calls[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    return calls


def test_spawned_workers_get_no_url_on_their_command_line(started, monkeypatch):
    from meminject.runner import _spawn

    storage = f"postgresql+psycopg2://meminject:{SECRET}@127.0.0.1:1/optuna"
    tracking = f"http://u:{SECRET}@127.0.0.1:5000"
    monkeypatch.setattr(_spawn, "open_storage", lambda url: None)
    monkeypatch.setattr(_spawn.optuna, "load_study", lambda **kwargs: None)
    monkeypatch.setattr(_spawn, "_watch", lambda *args: None)
    _spawn.spawn_workers("s", storage, 2, 4, progress=False, tracking=tracking)
    assert len(started) == 2
    for proc in started:
        assert not any(SECRET in arg or "storage=" in arg for arg in proc.cmd), proc.cmd  # what ps would show
        assert proc.env["MEMINJECT_STORAGE"] == storage and proc.env["MLFLOW_TRACKING_URI"] == tracking


def test_a_tracking_url_without_a_secret_is_not_put_in_a_worker_environment():
    cmd, env = _spawn_command()
    assert "MLFLOW_TRACKING_URI" not in env and env["MEMINJECT_STORAGE"].endswith("optuna.journal")
    assert cmd[-2:] == ["study=s", "progress=false"]


def _spawn_command():
    from meminject.runner._spawn import worker_command

    return worker_command("s", None, "sqlite:///mlruns/mlflow.db")


def test_ui_passes_its_store_to_mlflow_server_in_the_environment_and_prints_it_redacted(
    started, monkeypatch, capsys, tmp_path
):
    from meminject.cli import _ui

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_ui, "_experiment", lambda uri, *rest: ("1", "the runs table"))
    monkeypatch.setattr(_ui, "_wait_ready", lambda *args: None)
    monkeypatch.setattr("meminject.tracking._probe.probe_database", lambda uri: None)
    code = main(["ui", "port=0", f"tracking.uri={PG}"])
    out, err = capsys.readouterr()
    assert code == 2 and "stopped by itself" in err  # the fake server "exited" after the URL was printed
    assert SECRET not in out + err and "MLflow UI on postgresql+psycopg2://meminject:***@127.0.0.1:1/mlflow" in out
    (server,) = started
    assert not any(SECRET in arg for arg in server.cmd), server.cmd
    assert server.env["MLFLOW_BACKEND_STORE_URI"] == PG


def _sweep(tmp_path, *extra: str) -> int:
    return main(
        [
            "sweep",
            *TINY,
            "workers=0",
            "tracking.enabled=false",
            f"tracking.uri={PG}",
            f"storage={tmp_path / 'optuna.journal'}",
            "study=secret",
            *extra,
        ]
    )


def test_the_study_stores_no_password_and_a_resume_takes_it_from_the_environment(tmp_path, monkeypatch):
    from meminject.config import load_run_config
    from meminject.store._storage import open_storage
    from meminject.search._study import ATTR_SPEC, stored_spec
    from meminject.tracking import tracking_uri

    monkeypatch.chdir(tmp_path)
    assert _sweep(tmp_path) == 0
    journal = (tmp_path / "optuna.journal").read_bytes()
    assert SECRET.encode() not in journal
    study = optuna.load_study(study_name="secret", storage=open_storage(str(tmp_path / "optuna.journal")))
    overrides = stored_spec(study).overrides
    assert "tracking.uri=postgresql+psycopg2://meminject:***@127.0.0.1:1/mlflow" in overrides
    assert _sweep(tmp_path) == 0  # the same command resumes: the redacted URL is the same setting

    # another process (a worker, `best`): the secret comes from MLFLOW_TRACKING_URI, or one line says so
    monkeypatch.setattr(_secrets, "_KNOWN", {})
    cfg = load_run_config(overrides)
    with pytest.raises(ConfigError, match="export MLFLOW_TRACKING_URI="):
        tracking_uri(cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", PG.replace("127.0.0.1", "other-host"))  # not this URL
    with pytest.raises(ConfigError, match="comes without its secret"):
        tracking_uri(cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", PG)
    assert tracking_uri(cfg) == PG

    # a study stored in clear by an earlier meminject is redacted when resumed
    clear = json.loads(study.user_attrs[ATTR_SPEC])
    clear["overrides"] = [o.replace("***", SECRET) for o in clear["overrides"]]
    study.set_user_attr(ATTR_SPEC, json.dumps(clear, sort_keys=True))
    assert _sweep(tmp_path) == 0
    study = optuna.load_study(study_name="secret", storage=open_storage(str(tmp_path / "optuna.journal")))
    assert SECRET not in study.user_attrs[ATTR_SPEC]


def test_storage_and_tracking_urls_from_the_environment(tmp_path, monkeypatch):
    from meminject.config import load_run_config
    from meminject.store._storage import default_storage_url
    from meminject.tracking import tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEMINJECT_STORAGE", str(tmp_path / "elsewhere.journal"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert default_storage_url() == str(tmp_path / "elsewhere.journal")
    assert tracking_uri(load_run_config([])) == f"sqlite:///{tmp_path / 'env.db'}"
    assert tracking_uri(load_run_config(["tracking.uri=sqlite:///given.db"])) == "sqlite:///given.db"  # the key wins
    assert main(["sweep", *TINY, "workers=0", "tracking.enabled=false", "study=env"]) == 0
    assert (tmp_path / "elsewhere.journal").is_file() and not (tmp_path / "mlruns" / "optuna.journal").exists()
