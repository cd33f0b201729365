"""A URL with a query string (``?a=b``) passes when quoted for Hydra; unquoted, one line says how."""

from __future__ import annotations

import pytest

from meminject.cli import main
from meminject.config import load_run_config
from meminject.core._errors import ConfigError

URL = "http://127.0.0.1:9/?password=pw&a=b"


def test_a_quoted_url_with_a_query_string_is_passed_whole():
    assert load_run_config([f'tracking.uri="{URL}"']).tracking.uri == URL
    assert load_run_config([f"tracking.uri='{URL}'"]).tracking.uri == URL


def test_an_unquoted_one_is_refused_with_the_quoted_form():
    with pytest.raises(ConfigError) as caught:
        load_run_config([f"tracking.uri={URL}"])
    assert f"""'tracking.uri="{URL}"'""" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("command", ["eval", "sweep", "ui"])
def test_each_command_refuses_it_in_one_redacted_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main([command, *([] if command == "ui" else ["model=tiny", "model.device=cpu"]), f"tracking.uri={URL}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert (
        """quoted for Hydra, inside the shell's quotes: 'tracking.uri="http://127.0.0.1:9/?password=***&a=b"'"""
        in err[0]
    )
    assert "pw&" not in err[0] and not list(tmp_path.iterdir())  # hidden, and nothing written
