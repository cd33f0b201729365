"""A database tracking store that refuses the connection is one line at once, not MLflow's
~100 s of retries and 200 lines (issue #26); here the server is a closed loopback port (the
wrong-password case against a real PostgreSQL is in tests/e2e/test_reliability_secrets.py)."""

from __future__ import annotations

import time

import pytest
from servers import free_port

from meminject.cli import main
from meminject.core._errors import TrackingError
from meminject.tracking import probe_database

SECRET = "s3cr3t-Pw"
BOUND_S = 45  # one connection attempt and the pre-flight, on a loaded 2-core machine (MLflow retries ~100 s)


def _closed() -> str:
    return f"postgresql+psycopg2://meminject:{SECRET}@127.0.0.1:{free_port()}/mlflow"


def test_a_database_that_refuses_is_one_redacted_line_at_once():
    uri = _closed()
    started = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        probe_database(uri)
    assert time.monotonic() - started < BOUND_S
    text = str(caught.value)
    assert "\n" not in text and SECRET not in text and "meminject:***@127.0.0.1" in text
    assert "refused the connection" in text and "PGPASSWORD" in text


@pytest.mark.parametrize("uri", ["sqlite:///x.db", "http://u:p@127.0.0.1:1", "file:///tmp/mlruns"])
def test_other_stores_are_left_to_their_own_checks(uri):
    probe_database(uri)  # no connection attempted, nothing raised


@pytest.mark.parametrize("command", ["sweep", "ui", "eval"])
def test_each_command_answers_in_one_line_within_seconds(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = [] if command == "ui" else ["model=tiny", "model.device=cpu", "data.limit=6", "injection.layer=1"]
    started = time.monotonic()
    code = main([command, *config, f"tracking.uri={_closed()}", *(["port=0"] if command == "ui" else [])])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "refused the connection" in err[0], err
    assert SECRET not in err[0] and elapsed < BOUND_S
    if command == "sweep":  # refused before the study exists
        assert not (tmp_path / "mlruns" / "optuna.journal").exists()
