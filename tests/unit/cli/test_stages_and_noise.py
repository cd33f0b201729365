"""Say what is happening (one stage line per long step on stderr, also off a terminal); keep
the libraries' noise (MLflow's download bars, matplotlib's font cache line) away from the user."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd

from meminject.cli import main


def test_eval_prints_one_line_for_the_model_load_and_one_for_the_clean_pass_off_a_terminal(capsys, monkeypatch):
    import meminject.engine._models as models

    monkeypatch.setenv("MEMINJECT_PROGRESS", "0")  # as in a log file: no bars
    monkeypatch.setattr(models, "_CACHE", {})  # the model really loads in this process
    code = main(
        ["eval", "model=tiny", "model.device=cpu", "injection.layer=1", "data.limit=4", "tracking.enabled=false"]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    lines = err.splitlines()
    assert len([line for line in lines if line.startswith("loading model tiny (raw weights, float32, cpu)")]) == 1, err
    assert len([line for line in lines if line.startswith("clean pass: 4 prompts")]) == 1, err
    assert "\r" not in err and "%|" not in err  # no bar off a terminal


def test_the_heldout_check_says_what_it_does_also_without_a_bar(capsys, monkeypatch):
    from meminject.selection._heldout import heldout_report

    monkeypatch.setenv("MEMINJECT_PROGRESS", "0")

    class FakeRunner:
        def evaluator(self, cfg):
            return SimpleNamespace(progress=None)

        def run(self, cfg):
            gains = np.linspace(-0.01, 0.02, 12) if str(cfg.memory.type) == "correct" else np.zeros(12)
            table = pd.DataFrame({"gain": gains})
            if cfg.metric.specific:  # the shuffled copy's columns, as the evaluator adds them
                table = table.assign(gain_shuffled=np.zeros(12), specific_gain=gains)
            return None, None, SimpleNamespace(per_prompt=table)

    site = {
        "rank": 1,
        "model": "tiny",
        "weights": "raw",
        "injection.layer": 1,
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
    heldout_report(
        ["model=tiny", "model.device=cpu"], pd.DataFrame([site]), controls=["pos"], n_boot=20, runner=FakeRunner()
    )
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["held-out check: 1 sites, each with 1 controls (pos), on the held-out prompts (2 evaluations) …"]


def test_library_noise_is_switched_off_before_any_command(monkeypatch):
    from meminject.cli._main import _quiet_libraries

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    try:
        _quiet_libraries()
        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

        assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False  # MLflow's "Downloading artifacts" bars
    finally:
        os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    # matplotlib logs "generated new fontManager" at INFO on a fresh machine, and the CLI's root
    # logger shows INFO (its own stage lines): the library's logger must stop it
    assert logging.getLogger("matplotlib").level >= logging.WARNING
    assert not logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.INFO)
