"""Lower precision: the bfloat16 path runs and agrees roughly; `best` re-checks its sites in float32."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import compose, make_evaluator, sweep_args
from meminject.evaluation import InjectionSpec


def test_the_bfloat16_path_runs_and_stays_close_to_float32(demo):
    from meminject.models import load_model

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
    from meminject.errors import ConfigError
    from meminject.models import load_model

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
