"""An exported injection: the validated record, its hooks on a plain transformers model, and the
apply and generate commands (a record written here for the tiny model; the sweep round trip is
tests/e2e/test_e2e_export.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import compose, mlflow_runs
from meminject.cli import main
from meminject.engine import Injection, InjectionRecord, read_record, weights_fingerprint
from meminject.engine._injection_file import ModelRecord, meminject_version, sealed, write_record
from meminject.engine._plain import plain_model

PROMPT = "The first president of the United States fought in the"


def _record(model: str = "tiny", hook: str = "attn_out", **changes) -> InjectionRecord:
    cfg = compose(f"model={model}", "model.device=cpu")
    hf, tokenizer = plain_model(cfg.model)
    record = InjectionRecord(
        model=ModelRecord(
            name=cfg.model.name,
            architecture=type(hf).__name__,
            weights="raw",
            fingerprint=weights_fingerprint(hf),
            n_layers=hf.config.num_hidden_layers,
            d_model=hf.config.hidden_size,
            prepend_bos=True,
            bos_token_id=tokenizer.bos_token_id,
            overrides=[f"model={model}"],
        ),
        hook=hook,
        hook_name=f"blocks.1.hook_{hook}",
        layer=1,
        depth=0.5,
        head=None,
        site="layer",
        positions="all",
        tau=1.5,
        scale="relative",
        residual_norm=3.0,
        encoding="unembed",
        memory_type="correct",
        dtype="float32",
        study={"name": "hand", "trial": 0},
        gains={"train_gain": 0.0, "heldout_gain": None},
        verdict=None,
        controls={},
        meminject_version=meminject_version(),
    )
    return dataclasses.replace(record, **changes)


@pytest.fixture()
def export(tmp_path):
    folder = tmp_path / "export"
    write_record(folder, _record())
    return folder


def _edit(folder, change, reseal: bool = False) -> None:
    """Change the written record (``reseal``: and its digest, as a new export would be)."""
    path = folder / "injection.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(sealed(data) if reseal else data))


def test_the_record_reads_back_as_written(export):
    assert read_record(export) == _record()


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.pop("tau"), "field 'tau' is missing"),
        (lambda d: d["model"].pop("fingerprint"), "field 'fingerprint' is missing"),
        (lambda d: d.update(hook="nowhere"), "field 'hook' is 'nowhere', not one of attn_out"),
        (lambda d: d.update(layer=7), "field 'layer' is 7, outside the model's layers 0..2"),
        (lambda d: d.update(tau="big"), "field 'tau' must be float or int"),
        (lambda d: d.update(residual_norm=None), "field 'residual_norm' must be"),
        (lambda d: d.update(format_version=2), "format_version 2 is unknown to meminject"),
        (lambda d: d.update(colour="red"), "field 'colour' is not a field"),
        (lambda d: d.update(tau=d["tau"] * 1.01), "was edited after export (its digest does not match"),
        (lambda d: d["gains"].update(train_gain=0.5), "was edited after export"),
        (lambda d: d.pop("digest"), "field 'digest' is missing"),
    ],
)
def test_a_missing_edited_or_unknown_version_field_is_one_line_and_exit_2(export, capsys, change, words):
    _edit(export, change)
    assert main(["apply", f"injection={export}", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("meminject: error: ") and words in err[0], err


def test_a_model_with_other_weights_is_refused_naming_both_unless_allowed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "export"
    write_record(folder, _record(model="tiny-gemma3", hook="attn_out"))
    _edit(folder, lambda d: d["model"].update(overrides=["model=tiny"]), reseal=True)  # a Gemma export, on the Llama
    assert main(["apply", f"injection={folder}", "tracking.enabled=false", "data.limit=6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model tiny" in err[0] and "is not tiny-gemma3" in err[0], err
    out = tmp_path / "applied"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["apply", f"injection={folder}", "allow_model_mismatch=true", f"tracking.uri={uri}", "data.limit=6"]
    assert main([*args, f"output_dir={out}"]) == 0
    assert "is not tiny-gemma3" in json.loads((out / "summary.json").read_text())["model_mismatch"]
    (run,) = mlflow_runs(uri)  # eval's run, marked as apply's, the mismatch recorded
    assert (
        run.data.tags["meminject.command"] == "apply"
        and "is not tiny-gemma3" in run.data.tags["meminject.model_mismatch"]
    )
    assert run.data.tags["meminject.injection"] == str(folder.resolve()) and "mean_gain" in run.data.metrics
    llama, tokenizer = plain_model(compose("model=tiny").model)
    with pytest.raises(Exception, match="is not tiny-gemma3"):  # the Python face refuses it too
        Injection.load(folder).evaluate([PROMPT], ["George Washington"], [" war"], model=llama, tokenizer=tokenizer)


@pytest.mark.parametrize("model", ["tiny", "tiny-gemma3"])
@pytest.mark.parametrize("hook", ["attn_out", "mlp_out", "resid_pre"])
def test_apply_equals_the_plain_transformers_injection_per_prompt(tmp_path, monkeypatch, model, hook):
    """meminject apply (the engine, batched, prefix cache) and Injection.evaluate (HF hooks, one prompt
    at a time) at the exported residual norm, not the new dataset's."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "export"
    write_record(folder, _record(model=model, hook=hook))
    out = tmp_path / "applied"
    assert main(["apply", f"injection={folder}", "tracking.enabled=false", "data.limit=8", f"output_dir={out}"]) == 0
    engine = pd.read_csv(out / "per_prompt.csv")
    plain = Injection.load(folder).evaluate(
        engine.obscure_sentence.tolist(), engine.memory.tolist(), engine.answer.tolist()
    )
    for column in ("answer_prob_before", "answer_prob_after"):
        np.testing.assert_allclose(plain[column], engine[column], rtol=1e-4)
    assert (np.abs(engine.answer_prob_after / engine.answer_prob_before - 1)).max() > 1e-2


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_applied_hooks_come_off_on_exit_and_on_error_and_generate_works_inside(export):
    injection = Injection.load(export)
    model, tokenizer = injection.plain_model()
    ids = tokenizer(PROMPT, return_tensors="pt")
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    clean = model.generate(**ids, **settings)
    before = _hooks(model)
    with injection.applied(model, tokenizer, memory="George Washington"):
        assert _hooks(model) == before + 1
        injected = model.generate(**ids, **settings)
    assert _hooks(model) == before
    with pytest.raises(RuntimeError, match="boom"), injection.applied(model, tokenizer, memory="George Washington"):
        raise RuntimeError("boom")
    assert _hooks(model) == before
    assert not torch.equal(clean, injected)  # the injection changes the continuation
    assert torch.equal(model.generate(**ids, **settings), clean)  # and leaves nothing behind


def test_generate_prints_before_and_after_and_writes_json(tmp_path, capsys):
    export = tmp_path / "strong"
    write_record(export, _record(tau=6.0))
    out = tmp_path / "gen.json"
    args = ["generate", f"injection={export}", f"prompt={PROMPT}", "memory=George Washington", "answer= war"]
    assert main([*args, "max_new_tokens=5", f"out={out}"]) == 0
    shown = capsys.readouterr().out
    assert "without injection" in shown and "with injection" in shown and "P(answer)" in shown
    result = json.loads(out.read_text())["results"][0]
    assert result["continuation_before"] != result["continuation_after"]
    assert len(result["top_before"]) == 5 and result["answer_prob_before"] != result["answer_prob_after"]
    batch = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": [PROMPT, "The capital of France is"], "memory": ["George Washington", "Paris"]}).to_csv(
        batch, index=False
    )
    assert (
        main(["generate", f"injection={export}", f"prompts={batch}", "max_new_tokens=3", f"out={tmp_path / 'b.csv'}"])
        == 0
    )
    assert len(pd.read_csv(tmp_path / "b.csv")) == 2
    sampled = tmp_path / "sampled.csv"
    assert main([*args, "sample=true", "seed=3", f"out={sampled}"]) == 0
    again = tmp_path / "again.csv"
    assert main([*args, "sample=true", "seed=3", f"out={again}"]) == 0
    assert pd.read_csv(sampled).equals(pd.read_csv(again))  # a seeded sample is repeatable
