"""`meminject eval` end to end (bad input: test_bad_input.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from meminject.cli import main

GOOD_HEADER = "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"
GOOD_ROW = "Paris is the capital of,The city of the Eiffel Tower is the capital of,Paris,The city of the Eiffel Tower,France\n"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _csv(tmp_path, text: str | bytes, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


def test_eval_tiny_writes_table_config_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, "eval", "model=tiny", "injection.layer=1", "tracking.enabled=false", f"output_dir={out}")
    assert code == 0
    assert "mean gain" in stdout
    table = pd.read_csv(out / "per_prompt.csv")
    assert len(table) == 40 and {"answer_prob_before", "answer_prob_after", "answer_prob_explicit", "gain", "rank_before", "rank_after", "top_k_after"} <= set(table.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean_gain"] == pytest.approx(table.gain.mean())
    assert "layer: 1" in (out / "config.yaml").read_text()


# Bad input (CSV files, overrides, sweeps, servers): the table in test_bad_input.py.


@pytest.mark.slow
def test_eval_smollm2_handwritten_end_to_end(tmp_path, capsys, shared_data, mlflow_uri):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "eval", "model=smollm2-135m", "data=handwritten", f"data.dir={shared_data}", "injection.layer=25", "injection.tweak=4",
        "memory.encoding=unembed", f"output_dir={out}", f"tracking.uri={mlflow_uri}",
    )
    assert code == 0, err
    table = pd.read_csv(out / "per_prompt.csv")
    assert len(table) == 106
    assert (table.answer_prob_explicit.mean() > table.answer_prob_before.mean())  # the explicit twin is easier
    assert "MLflow run" in stdout
