"""`meminject eval` end to end, and every bad input answered in one line with exit 2."""

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


BAD_CSVS = {
    "empty file": ("", "empty"),
    "header only": (GOOD_HEADER, "header only"),
    "wrong delimiter": (GOOD_HEADER.replace(",", ";") + GOOD_ROW.replace(",", ";"), "delimiter"),
    "missing column": (GOOD_HEADER.replace(",answer", "") + GOOD_ROW.rsplit(",", 1)[0] + "\n", "missing column(s) answer"),
    "empty answer": (GOOD_HEADER + GOOD_ROW.rsplit(",", 1)[0] + ",\n", "row 2, column answer"),
    "NaN field": (GOOD_HEADER + GOOD_ROW + GOOD_ROW.replace("Paris,", "NaN,", 1).replace("Paris is", "X is"), "row 3, column explicit_entity"),
    "malformed quotes": (GOOD_HEADER + '"Paris is the capital of,x,y,z,France\n', "malformed"),
    "non-UTF-8 bytes": (GOOD_HEADER.encode() + b"Caf\xe9 is,The place is,Caf\xe9,The place,France\n", "not valid UTF-8"),
    "prompt longer than context": (GOOD_HEADER + ("word " * 400) + ",obscure is,Paris,The city,France\n", "more than tiny's context"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_is_one_line_and_exit_2(tmp_path, capsys, case):
    text, expected = BAD_CSVS[case]
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "eval", "model=tiny", "injection.layer=1", "tracking.enabled=false", f"data.path={_csv(tmp_path, text)}", f"output_dir={out}")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meminject: error:"), err
    assert expected in lines[0]
    assert not out.exists()


BAD_OVERRIDES = {
    "unknown model": (["model=not-a-model"], "unknown model option"),
    "layer out of range": (["injection.layer=7"], "injection.layer=7 is out of range"),
    "head out of range": (["injection.site=head", "injection.head=9"], "injection.head=9 is out of range"),
    "negative tweak": (["injection.tweak=-1"], "injection.tweak=-1.0 must be"),
    "NaN tweak": (["injection.tweak=nan"], "injection.tweak=nan must be"),
    "unknown key": (["injection.depth=3"], "injection.depth"),
    "bad override syntax": (["injection.layer==3]"], "bad override"),
    "missing data file": (["data.path=/nonexistent/x.csv"], "does not exist"),
    "unknown dataset preset": (["data=nope"], "unknown data option"),
    "bad encoding": (["memory.encoding=onehot"], "memory.encoding='onehot'"),
    "bad site": (["injection.site=mlp"], "injection.site='mlp'"),
    "bad positions": (["injection.positions=first"], "injection.positions='first'"),
    "non-integer layer": (["injection.layer=abc"], "injection.layer='abc' must be an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_OVERRIDES))
def test_bad_override_is_one_line_and_exit_2(tmp_path, capsys, case):
    overrides, expected = BAD_OVERRIDES[case]
    if not any(o.startswith("injection.layer") for o in overrides):
        overrides = ["injection.layer=1", *overrides]
    code, _, err = run_cli(capsys, "eval", "model=tiny", "tracking.enabled=false", f"output_dir={tmp_path / 'out'}", *overrides)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meminject: error:"), err
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


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
