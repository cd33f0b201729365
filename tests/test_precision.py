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
    # bf16 keeps ~3 significant digits: probabilities agree to about 1e-2 relative, not 1e-5
    np.testing.assert_allclose(results["bfloat16"]["answer_prob_after"], results["float32"]["answer_prob_after"], rtol=0.1, atol=1e-4)


def test_float16_on_a_cpu_is_refused_with_what_to_use():
    from meminject.core._errors import ConfigError
    from meminject.engine._models import load_model

    with pytest.raises(ConfigError, match="float16 runs on CUDA only.*bfloat16"):
        load_model(compose("model=tiny", "model.device=cpu", "model.dtype=float16").model)
    with pytest.raises(ConfigError, match="perf.dtype.*model.dtype"):
        compose("model=tiny", "perf.dtype=bfloat16")


def test_best_rechecks_a_bfloat16_sweep_in_float32(tmp_path, monkeypatch, capsys):
    from meminject.cli import main
    from meminject.sweep import _trial

    monkeypatch.chdir(tmp_path)
    assert main(sweep_args(tmp_path, "study=bf", "n_trials=3", "model.dtype=bfloat16", "data.limit=12")) == 0
    dtypes = []
    original = _trial.TrialRunner.run

    def spy(self, cfg):
        dtypes.append(str(cfg.model.dtype))
        return original(self, cfg)

    monkeypatch.setattr(_trial.TrialRunner, "run", spy)
    capsys.readouterr()
    assert main(["best", "study=bf", f"storage={tmp_path / 'optuna.journal'}", "top=1", "controls=random_vector", "bootstrap=100"]) == 0
    assert "the sweep ran in bfloat16; the held-out check re-evaluates its sites in float32" in capsys.readouterr().out
    assert dtypes and set(dtypes) == {"float32"}


def test_best_ranks_a_bfloat16_sweeps_top_sites_by_their_float32_values(tmp_path, monkeypatch, capsys):
    """Without a held-out part too: the shown metrics are float32's (equal to a float32 run of
    the same site), the order is theirs, and the sweep's own value and rank stay beside them."""
    import pandas as pd

    from meminject.cli import main
    from meminject.config._compose import compose_config
    from meminject.sweep._trial import TrialRunner

    monkeypatch.chdir(tmp_path)
    fixed = ["data.limit=12", "data.part=all"]
    assert main(sweep_args(tmp_path, "study=bf", "n_trials=6", "model.dtype=bfloat16", *fixed)) == 0
    capsys.readouterr()
    assert main(["best", "study=bf", f"storage={tmp_path / 'optuna.journal'}", "top=4", "distinct=false"]) == 0
    out = capsys.readouterr().out
    assert "the sweep ran in bfloat16; its top 4 sites were re-evaluated in float32 on the same prompts and are ranked by that" in out
    table = pd.read_csv(tmp_path / "outputs" / "best" / "bf.csv")
    head = table.head(4)
    assert list(head["rank"]) == [1, 2, 3, 4] and sorted(head["sweep_rank"]) == [1, 2, 3, 4]
    assert list(head["mean_gain"]) == sorted(head["mean_gain"], reverse=True)
    runner = TrialRunner()
    for _, site in head.iterrows():
        cfg = compose_config([*TINY, *fixed, f"injection.layer={site['injection.layer']}", f"injection.tweak={site['injection.tweak']}",
                              f"memory.encoding={site['memory.encoding']}", "model.dtype=float32"])
        assert site["mean_gain"] == pytest.approx(runner.run(cfg)[2].summary["mean_gain"], abs=1e-7)
        assert site["bfloat16"] != site["mean_gain"]  # the sweep's own value is kept beside it
