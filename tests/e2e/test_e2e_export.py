"""A sweep's best site round-trips: ``meminject export``, then a fresh process that loads it with
plain transformers (no TransformerLens) gives the sweep trial's per-prompt P(answer), for every
hook, on the tiny Llama, the tiny Gemma 3 and (slow) SmolLM2; the export is on the MLflow runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import env
from meminject.cli import main

# The fresh process: only transformers and meminject.Injection (its hooks are torch hooks on the HF modules).
FRESH = textwrap.dedent(
    """
    import sys, pandas as pd
    from meminject import Injection
    injection = Injection.load(sys.argv[1])
    prompts = pd.read_csv(sys.argv[2])
    name = injection.record.model.name
    if name in ("smollm2-135m", "gemma3-270m"):  # the checkpoint from disk, as a colleague would
        # eager attention, as the bridge computes it: SDPA's own rounding, amplified by a strong
        # injection, moves P(answer) by up to ~1.3e-4 relative (resid_pre, τ 0.8), eager by 2e-5
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from meminject.core._paths import cache_dir
        model = AutoModelForCausalLM.from_pretrained(cache_dir() / "models" / name, attn_implementation="eager").eval()
        tokenizer = AutoTokenizer.from_pretrained(cache_dir() / "models" / f"{name}-tokenizer")
        assert "transformer_lens" not in sys.modules
    else:  # the seeded tiny models exist only as code: meminject builds them with plain transformers
        model, tokenizer = injection.plain_model()
    table = injection.evaluate(prompts.obscure_sentence.tolist(), prompts.memory.tolist(), prompts.answer.tolist(), model=model, tokenizer=tokenizer)
    table.to_csv(sys.argv[3], index=False)
    """
)


def _round_trip(
    tmp_path: Path, monkeypatch, capsys, model: str, hook: str, *extra: str, best: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = str(tmp_path / "optuna.journal")
    args = [
        "sweep",
        "sweep=smoke",
        f"model={model}",
        "model.device=cpu",
        "data.limit=8",
        "n_trials=2",
        "study=rt",
        f"injection.hook={hook}",
        "injection.layer=choice(1)",
        "injection.tweak=choice(0.8,1.6)",
        "progress=false",
        f"storage={storage}",
        f"tracking.uri={uri}",
        *extra,
    ]
    assert main(args) == 0
    if best:  # the held-out check: the export then carries its gains, verdict and controls
        assert main(["best", "study=rt", f"storage={storage}", "top=2", "bootstrap=200", "depth_figure=false"]) == 0
    capsys.readouterr()
    assert main(["export", f"storage={storage}"]) == 0  # no study: what can be exported
    listing = capsys.readouterr().out
    assert "sites can be exported" in listing and "rank 1: site='L1 τ" in listing
    assert main(["export", "study=rt", f"storage={storage}", "rank=9"]) == 2
    assert "rank=9: the study has" in capsys.readouterr().err
    label = listing.split("rank 1: site=")[1].splitlines()[0].strip("'")  # the first site, by its label
    assert main(["export", "study=rt", f"storage={storage}", f"site={label}", f"out={tmp_path / 'by-label'}"]) == 0
    assert json.loads((tmp_path / "by-label" / "injection.json").read_text())["study"]["rank"] == 1
    assert main(["export", "study=rt", f"storage={storage}", "site=L9 τ1 unembed correct"]) == 2
    assert "is not a site of this study" in capsys.readouterr().err
    assert main(["export", "study=rt", f"storage={storage}", "rank=1", f"out={tmp_path / 'export'}"]) == 0
    record = json.loads((tmp_path / "export" / "injection.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(record["study"]["mlflow_parent_run"])
    trial_run = next(
        r
        for r in client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`meminject.trial_number` = '{record['study']['trial']}'"
        )
    )
    sweep_table = pd.read_csv(client.download_artifacts(trial_run.info.run_id, "per_prompt.csv", str(tmp_path)))
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    sweep_table.to_csv(tmp_path / "prompts.csv", index=False)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "export"),
            str(tmp_path / "prompts.csv"),
            str(tmp_path / "plain.csv"),
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = pd.read_csv(tmp_path / "plain.csv")
    # the export is on the run it came from: the file as an artifact and a tag, the trial's run tagged too
    assert "meminject.export.rank1" in parent.data.tags
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "exports/rank1")] == [
        "exports/rank1/injection.json"
    ]
    assert trial_run.data.tags["meminject.export"] == str(tmp_path / "export")
    return sweep_table, plain, record


def _agree(sweep_table: pd.DataFrame, plain: pd.DataFrame) -> str:
    """Plain transformers against the sweep, per prompt (rtol 1e-4); the largest relative differences."""
    worst = {}
    for column in ("answer_prob_before", "answer_prob_after"):
        ours, theirs = plain[column].to_numpy(), sweep_table[column].to_numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=0)
        worst[column.removeprefix("answer_prob_")] = float(np.max(np.abs(ours / theirs - 1)))
    moved = (
        np.abs(sweep_table["answer_prob_after"] - sweep_table["answer_prob_before"]) / sweep_table["answer_prob_before"]
    )
    assert moved.max() > 1e-2, "the injection moves P(answer): this test can fail"
    return ", ".join(f"{k} {v:.2e}" for k, v in worst.items())


@pytest.mark.parametrize("model", ["tiny", "tiny-gemma3"])
@pytest.mark.parametrize("hook", ["attn_out", "mlp_out", "resid_pre"])
def test_best_site_round_trips_through_plain_transformers(tmp_path, monkeypatch, capsys, model, hook, shared_data):
    best = hook == "attn_out"
    sweep_table, plain, record = _round_trip(tmp_path, monkeypatch, capsys, model, hook, best=best)
    assert record["hook"] == hook and record["scale"] == "relative" and record["residual_norm"] > 0
    assert record["model"]["fingerprint"].startswith("sha256:") and record["study"]["rank"] == 1
    if best:
        gains = record["gains"]
        assert gains["heldout_gain"] is not None and gains["heldout_ci_low"] <= gains["heldout_ci_high"]
        assert gains["heldout_specific_gain"] is not None and record["verdict"]
        assert set(record["controls"]) == {"pos", "pos_matched", "random_vector"}
    else:
        assert record["gains"]["heldout_gain"] is None and record["verdict"] is None
    print(f"{model} {hook}: max relative difference {_agree(sweep_table, plain)}")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
@pytest.mark.parametrize("hook", ["attn_out", "mlp_out", "resid_pre"])
def test_real_model_best_site_round_trips_through_plain_transformers(
    tmp_path, monkeypatch, capsys, model, hook, shared_data
):
    sweep_table, plain, _ = _round_trip(tmp_path, monkeypatch, capsys, model, hook, "model.weights=raw")
    print(f"{model} {hook}: max relative difference {_agree(sweep_table, plain)}")
