"""`meminject eval` end to end (bad input: test_bad_input.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from meminject.cli import main

GOOD_HEADER = "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"
GOOD_ROW = (
    "Paris is the capital of,The city of the Eiffel Tower is the capital of,Paris,The city of the Eiffel Tower,France\n"
)


TINY_EVAL = ("model=tiny", "model.device=cpu", "injection.layer=1")


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
    code, stdout, _ = run_cli(
        capsys, "eval", "model=tiny", "injection.layer=1", "tracking.enabled=false", f"output_dir={out}"
    )
    assert code == 0
    assert "mean gain" in stdout
    table = pd.read_csv(out / "per_prompt.csv")
    assert len(table) == 40 and {
        "answer_prob_before",
        "answer_prob_after",
        "answer_prob_explicit",
        "gain",
        "rank_before",
        "rank_after",
        "top_k_after",
    } <= set(table.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean_gain"] == pytest.approx(table.gain.mean())
    assert "layer: 1" in (out / "config.yaml").read_text()


# Bad input (CSV files, overrides, sweeps, servers): the table in test_bad_input.py.


@pytest.mark.slow
def test_eval_smollm2_handwritten_end_to_end(tmp_path, capsys, shared_data, mlflow_uri):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys,
        "eval",
        "model=smollm2-135m",
        "data=handwritten",
        f"data.dir={shared_data}",
        "injection.layer=25",
        "injection.tweak=4",
        "memory.encoding=unembed",
        f"output_dir={out}",
        f"tracking.uri={mlflow_uri}",
    )
    assert code == 0, err
    table = pd.read_csv(out / "per_prompt.csv")
    assert len(table) == 106
    assert table.answer_prob_explicit.mean() > table.answer_prob_before.mean()  # the explicit twin is easier
    assert "MLflow run" in stdout


# ---------------------------------------------------------------- names, progress and messages (issue 16)


def _prompts(tmp_path, n: int = 6, name: str = "my_prompts.csv") -> str:
    rows = "".join(GOOD_ROW.replace("Paris is", f"Paris ({i}) is") for i in range(n))
    return _csv(tmp_path, GOOD_HEADER + rows, name)


def test_eval_names_the_data_file_and_shows_progress_on_stderr(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEMINJECT_PROGRESS", "1")  # bars are for terminals; captured output is not one
    path = _prompts(tmp_path, 2)
    code, stdout, err = run_cli(
        capsys,
        "eval",
        "model=tiny",
        "model.device=cpu",
        "injection.layer=1",
        f"data.path={path}",
        "tracking.enabled=false",
        f"output_dir={tmp_path / 'out'}",
    )
    assert code == 0, err
    assert "my_prompts.csv (2 prompts)" in stdout and "demo" not in stdout.splitlines()[0]
    # a tqdm bar on stderr (stdout stays the results), batch by batch through each pass
    assert "eval my_prompts.csv" in err
    assert all(f"[{stage}]" in err for stage in ("clean", "explicit", "injected")) and "1/1" in err


def test_sweep_study_name_follows_the_data_file_and_a_refusal_names_what_differs(tmp_path, capsys, monkeypatch):
    from conftest import sweep_args

    monkeypatch.chdir(tmp_path)
    args = sweep_args(tmp_path, f"data.path={_prompts(tmp_path)}", "n_trials=2")
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "study smoke-tiny-my_prompts " in stdout  # another file, another study (not smoke-tiny-demo)
    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0 and "study smoke-tiny-my_prompts is complete (2 trials): nothing to run" in stdout
    code, _, err = run_cli(capsys, *args, "injection.tweak=interval(2, 8)", "memory.type=random")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert (
        "injection.tweak: tag(log, interval(0.005, 1)) → interval(2, 8)" in lines[0]
        and "memory.type: correct → random" in lines[0]
        and "study=NEW_NAME" in lines[0]
    )


def test_heldout_check_shows_progress_over_sites_and_controls(capsys, monkeypatch):
    monkeypatch.setenv("MEMINJECT_PROGRESS", "1")  # bars are for terminals; captured output is not one
    from types import SimpleNamespace

    import numpy as np

    import meminject.selection._heldout as heldout
    from meminject.selection._heldout import heldout_report

    bars = []
    real_bar = heldout.progress_bar

    def recorded_bar(*args, **kwargs):
        bars.append(real_bar(*args, **kwargs))
        bars[-1].mininterval = 0  # redraw on every update: the fake runner is instantaneous
        return bars[-1]

    monkeypatch.setattr(heldout, "progress_bar", recorded_bar)

    class FakeRunner:
        engine = SimpleNamespace(progress=None)

        def evaluator(self, cfg):
            return self.engine

        def run(self, cfg):
            if self.engine.progress is not None:
                self.engine.progress("injected", 1, 3)  # what an Evaluator reports after each batch
            gains = np.linspace(-0.01, 0.02, 12) if str(cfg.memory.type) == "correct" else np.zeros(12)
            table = pd.DataFrame({"gain": gains})
            if cfg.metric.specific:  # the shuffled copy's columns, as the evaluator adds them
                table = table.assign(gain_shuffled=np.zeros(12), specific_gain=gains)
            return None, None, SimpleNamespace(per_prompt=table)

    sites = pd.DataFrame(
        [
            {
                "rank": r,
                "model": "tiny",
                "weights": "raw",
                "injection.layer": layer,
                "injection.head": "-",
                "injection.site": "layer",
                "injection.positions": "all",
                "injection.scale": "absolute",
                "injection.tweak": 4.0,
                "memory.type": "correct",
                "memory.pos": "-",
                "memory.encoding": "unembed",
                "mean_gain": 0.01,
            }
            for r, layer in ((1, 1), (2, 2))
        ]
    )
    report = heldout_report(
        ["model=tiny", "model.device=cpu"], sites, controls=["pos", "random_vector"], n_boot=50, runner=FakeRunner()
    )
    assert len(report) == 2
    err = capsys.readouterr().err
    assert "held-out check" in err and "6/6" in err and "L2 τ4 unembed correct" in err and "[injected batch 1/3]" in err
    assert [(bar.n, bar.total) for bar in bars] == [(6, 6)]


README_SHAPES = {  # each line of the README's `meminject sweep` example, by shape (numbers vary by machine)
    "start": r"^sweep \S+: study \S+ · \w+ sampler · \d+ trials · (maximize|minimize) \w+ · axes \S+=.+$",
    "storage": r"^  storage \S+ · workers \d+ · MLflow \S+$",
    "done": r"^done: \d+ complete trials \(\d+ new\) in [\d.]+ s$",
    "row": r"^\s+\d+\s+\S+\s+\d+\s+[\d.]+\s+\S+\s+[\d.]+\s+\w+\s+\w+\s+\w+\s+\w+\s+-?[\d.]+\s+[\d.]+\s+[\d.]+\s+\d+$",
    "ranked": r"^ranked sites: \S+\.csv$",
}


def test_readme_sweep_example_has_the_shape_of_a_real_run(tmp_path, capsys, monkeypatch):
    import re

    from conftest import ROOT, sweep_args

    text = (ROOT / "README.md").read_text()
    block = text.split("$ meminject sweep\n", 1)[1].split("```", 1)[0].splitlines()
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(capsys, *sweep_args(tmp_path, "n_trials=3"))  # seeded (sweep seed 0), tiny model
    assert code == 0, err
    out = stdout.splitlines()
    for name, shape in README_SHAPES.items():
        assert any(re.match(shape, line) for line in block), f"README example lacks its {name} line"
        assert any(re.match(shape, line) for line in out), (
            f"meminject sweep prints no {name} line like the README's: {stdout}"
        )
    header = next(line for line in block if line.split()[:2] == ["rank", "model"])
    assert (
        header.split() == next(line for line in out if line.split()[:2] == ["rank", "model"]).split()
    )  # the same columns
    assert re.search(r"\d+/\d+ \[", err)  # the progress bar goes to stderr


def test_eval_on_tiny_with_the_default_layer_fails_in_one_line_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    """conf/injection/default.yaml's layer 5 does not exist in tiny's 3 layers: refused from the
    model's config, naming the layers there are, with no ./mlruns or ./outputs left behind."""
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(capsys, "eval", "model=tiny", "data.limit=4")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and stdout == ""
    assert "injection.layer=5 is out of range for tiny (layers 0..2)" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_eval_run_has_its_own_experiment_the_table_columns_and_its_real_duration(tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'm.db'}"
    code, _, err = run_cli(
        capsys, "eval", *TINY_EVAL, "data.limit=4", f"tracking.uri={db}", f"output_dir={tmp_path / 'o'}"
    )
    assert code == 0, err
    client = MlflowClient(tracking_uri=db)
    assert "meminject/eval" in [e.name for e in client.search_experiments()]
    (run,) = client.search_runs([client.get_experiment_by_name("meminject/eval").experiment_id])
    assert {k: run.data.params[k] for k in ("model", "dataset", "n_prompts")} == {
        "model": "tiny",
        "dataset": "demo",
        "n_prompts": "4",
    }
    # the duration is the evaluation's (as printed and logged as eval_seconds), not the time it took to log it
    duration_ms = run.info.end_time - run.info.start_time
    assert abs(duration_ms - 1000 * run.data.metrics["eval_seconds"]) <= 1


def test_eval_help_lists_every_memory_type_and_preset(capsys):
    from conftest import ROOT

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    presets = [p.stem for p in (ROOT / "conf" / "memory").glob("*.yaml") if not p.stem.startswith("_")]
    assert {"pos_matched", "random_matched"} <= set(presets)
    types = next(line for line in out.splitlines() if "memory.type=" in line).split("memory.type=")[1].split()[0]
    assert sorted(types.split("|")) == sorted(presets)  # every type, the matched controls too
    assert all(name in out for name in presets)


def test_readme_says_one_thing_about_per_trial_charts():
    """The per-trial chart is off by default (tracking.trial_figures): no paragraph of README or
    the docs may say otherwise."""
    from conftest import ROOT

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    paragraphs = [p for page in pages for p in page.read_text().split("\n\n")]
    about = [p for p in paragraphs if "chart" in p and "trial" in p and "per-prompt" in p]
    assert about and all("trial_figures" in p for p in about), [p[:200] for p in about if "trial_figures" not in p]
