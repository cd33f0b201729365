"""Lower precision: the bfloat16 path runs and agrees roughly; `best` re-checks its sites in float32."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY, compose, make_evaluator, sweep_args
from meminject.engine._evaluation import InjectionSpec


def test_the_bfloat16_path_runs_and_stays_close_to_float32(demo):
    from meminject.engine._models import load_model

    memory = compose("model=tiny").memory
    results = {}
    for dtype in ("float32", "bfloat16"):
        model = load_model(compose("model=tiny", "model.device=cpu", f"model.dtype={dtype}").model)
        assert str(model.dtype).endswith(dtype)
        result = make_evaluator(model, demo).evaluate(InjectionSpec(layer=1, tweak=4.0), memory)
        results[dtype] = result.per_prompt
        assert np.isfinite(result.per_prompt[["answer_prob_after", "gain", "damage"]].to_numpy()).all()
    # bf16 keeps ~3 significant digits of each weight: logits move by up to ~0.3 here, and so do the
    # log-probabilities (probabilities 1e-8 to 1e-4: an absolute tolerance would say nothing)
    bf16, f32 = (np.log(results[d]["answer_prob_after"].to_numpy(float)) for d in ("bfloat16", "float32"))
    np.testing.assert_allclose(bf16, f32, rtol=0, atol=0.5)


def test_float16_on_a_cpu_is_refused_with_what_to_use():
    from meminject.core._errors import ConfigError
    from meminject.engine._models import load_model

    with pytest.raises(ConfigError, match="float16 runs on CUDA only.*bfloat16"):
        load_model(compose("model=tiny", "model.device=cpu", "model.dtype=float16").model)
    with pytest.raises(ConfigError, match="perf.dtype.*model.dtype"):
        compose("model=tiny", "perf.dtype=bfloat16")


def test_best_rechecks_a_bfloat16_sweep_in_float32(tmp_path, monkeypatch, capsys):
    from meminject.cli import main
    from meminject.runner import _trial

    monkeypatch.chdir(tmp_path)
    assert main(sweep_args(tmp_path, "study=bf", "n_trials=3", "model.dtype=bfloat16", "data.limit=12")) == 0
    dtypes = []
    original = _trial.TrialRunner.run

    def spy(self, cfg):
        dtypes.append(str(cfg.model.dtype))
        return original(self, cfg)

    monkeypatch.setattr(_trial.TrialRunner, "run", spy)
    capsys.readouterr()
    assert (
        main(
            [
                "best",
                "study=bf",
                f"storage={tmp_path / 'optuna.journal'}",
                "top=1",
                "controls=random_vector",
                "bootstrap=100",
                "depth_figure=true",  # its held-out line too: best's judged sites must fall on it
            ]
        )
        == 0
    )
    assert "the sweep ran in bfloat16; the held-out check re-evaluates its sites in float32" in capsys.readouterr().out
    assert dtypes and set(dtypes) == {"float32"}
    assert (tmp_path / "outputs" / "figures" / "bf" / "gain_by_depth.png").exists()


def test_best_ranks_a_bfloat16_sweeps_top_sites_by_their_float32_values(tmp_path, monkeypatch, capsys):
    """Without a held-out part too: the shown metrics are float32's (equal to a float32 run of
    the same site), the order is theirs, and the sweep's own value and rank stay beside them."""
    import pandas as pd

    from meminject.cli import main
    from meminject.config import load_run_config as compose_config
    from meminject.runner._trial import TrialRunner

    monkeypatch.chdir(tmp_path)
    fixed = ["data.limit=12", "data.part=all"]
    assert main(sweep_args(tmp_path, "study=bf", "n_trials=6", "model.dtype=bfloat16", *fixed)) == 0
    capsys.readouterr()
    assert main(["best", "study=bf", f"storage={tmp_path / 'optuna.journal'}", "top=4", "distinct=false"]) == 0
    out = capsys.readouterr().out
    assert (
        "the sweep ran in bfloat16; its top 4 sites were re-evaluated in float32 on the same prompts and are ranked by that"
        in out
    )
    table = pd.read_csv(tmp_path / "outputs" / "best" / "bf.csv")
    head = table.head(4)
    assert list(head["rank"]) == [1, 2, 3, 4] and sorted(head["sweep_rank"]) == [1, 2, 3, 4]
    assert list(head["mean_gain"]) == sorted(head["mean_gain"], reverse=True)
    runner = TrialRunner()
    for _, site in head.iterrows():
        cfg = compose_config(
            [
                *TINY,
                *fixed,
                f"injection.layer={site['injection.layer']}",
                f"injection.tweak={site['injection.tweak']}",
                f"memory.encoding={site['memory.encoding']}",
                f"injection.scale={site['injection.scale']}",
                "model.dtype=float32",
            ]
        )
        summary = runner.run(cfg)[2].summary  # a gain is a difference of probabilities: to 1e-4 of them
        assert site["mean_gain"] == pytest.approx(summary["mean_gain"], rel=0, abs=1e-4 * summary["mean_prob_before"])
        assert site["bfloat16"] != site["mean_gain"]  # the sweep's own value is kept beside it


def test_device_auto_picks_cuda_when_visible_and_cuda_without_one_is_one_clear_error(monkeypatch):
    """The device choice, checked without a GPU: a faked visible CUDA makes ``auto`` pick it."""
    import torch

    from meminject.core._errors import ConfigError
    from meminject.engine._models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device is visible.*model.device=cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda" and resolve_device("cuda:1") == torch.device("cuda:1")
