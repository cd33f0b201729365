"""The typed run config: built once from the composed config, checked once, hashable, and
composed at most once per process and command line."""

from __future__ import annotations

import dataclasses

import pytest

from meminject.config import (
    RunConfig,
    build_run_config,
    compose_config,
    flat_config,
    load_run_config,
    trial_key,
    with_values,
)
from meminject.core import ConfigError

TINY = ["model=tiny", "data.limit=8"]


def test_the_typed_config_holds_every_composed_key_with_its_value():
    for overrides in ([], TINY, ["memory=pos", "data=handwritten"], ["model=pretrained", "model.hf_name=gpt2"]):
        composed = flat_config(compose_config(overrides))
        run = load_run_config(overrides)
        assert isinstance(run, RunConfig)
        assert list(run.flat()) == list(composed)  # same keys, same order (MLflow params, config.yaml)
        assert {
            k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in run.flat().items()
        } == {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in composed.items()}


def test_it_is_frozen_and_hashable_so_caches_key_on_it():
    run = load_run_config(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.injection.layer = 2  # type: ignore[misc]
    assert hash(run) == hash(load_run_config(TINY)) and {run: 1}[build_run_config(compose_config(TINY))] == 1
    assert load_run_config(TINY) is run  # composed once per process and command line


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["injection.layer=abc"], "injection.layer='abc' must be an integer"),
        (["injection.tweak=1e308"], "injection.tweak=1e+308 is beyond any useful strength"),
        (["injection.tweak=nan"], "injection.tweak=nan must be a finite number"),
        (["injection.tweak=-1"], "injection.tweak=-1.0 must be >= 0"),
        (["data.limit=0"], "data.limit=0 must be >= 1"),
        (["memory.type=nope"], "memory.type='nope' is not one of correct"),
        (["perf.trials_per_forward=0"], "perf.trials_per_forward=0 must be >= 1 (or auto)"),
        (["tracking.retry_s=-1"], "tracking.retry_s=-1.0 must be >= 0"),
        (["top_k=0"], "top_k=0 must be >= 1"),
        (["model.prepend_bos=maybe"], "model.prepend_bos='maybe' must be true or false"),
    ],
)
def test_a_bad_value_is_refused_once_where_its_dataclass_is_built(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        build_run_config(compose_config([*TINY, *overrides]))


def test_unknown_and_missing_keys_are_named():
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(compose_config(TINY), resolve=True)
    container["injection"]["strength"] = 3
    with pytest.raises(ConfigError, match="unknown config key 'injection.strength'"):
        build_run_config(container)
    del container["injection"]["strength"], container["memory"]["draw"]
    with pytest.raises(ConfigError, match="required config value not set: memory.draw"):
        build_run_config(container)


def test_setting_a_trial_point_equals_composing_it():
    run = load_run_config(TINY)
    params = {
        "injection.layer": 2,
        "injection.tweak": 3,
        "memory.encoding": "embed",
        "memory.type": "pos",
        "memory.pos": "verb",
    }
    assert with_values(run, params) == build_run_config(
        compose_config([*TINY, *(f"{k}={v}" for k, v in params.items())])
    )
    with pytest.raises(ConfigError, match="injection.tweak='x' must be a number"):
        with_values(run, {"injection.tweak": "x"})
    with pytest.raises(ConfigError, match="unknown config key 'memory.colour'"):
        with_values(run, {"memory.colour": "red"})


def test_the_point_key_and_trial_key_are_equal_for_equivalent_points():
    run = load_run_config(TINY)
    head = with_values(run, {"injection.site": "head", "injection.head": 3})
    assert head.point.key == run.point.key and trial_key(head) == trial_key(run)  # a head site is its layer site
    assert (
        with_values(run, {"memory.pos": "verb"}).point.key == run.point.key
    )  # the correct memory has no part of speech
    pos = with_values(run, {"memory.type": "pos"})
    assert with_values(pos, {"memory.pos": "verb"}).point.key != pos.point.key
    assert with_values(run, {"injection.tweak": 4.5}).point.key != run.point.key
    assert run.point.hook_name == f"blocks.{run.injection.layer}.hook_attn_out"
    assert with_values(
        run, {"injection.site": "head", "injection.head": 1, "injection.literal_hook": True}
    ).point.hook_name.endswith("attn.hook_result")


def test_a_seeded_paper_grid_sweep_composes_once_per_process_and_command(tmp_path, monkeypatch):
    """In one process: `meminject sweep` (20 trials, in-process worker) then `meminject best`
    with its held-out checks. Before the typed config this took ~25 composes in resolve_space
    alone, plus more per held-out site and control."""
    import meminject.config._build as build
    import meminject.config._compose as compose
    from meminject.cli import main

    monkeypatch.chdir(tmp_path)
    build._LOADED.clear()
    calls = []
    real = compose._compose
    monkeypatch.setattr(compose, "_compose", lambda *a, **k: calls.append(a) or real(*a, **k))
    common = ["model=tiny", "data.limit=12", "tracking.enabled=false", "progress=false"]
    assert main(["sweep", "sweep=paper_grid", "n_trials=20", "study=grid", *common]) == 0
    after_sweep = len(calls)
    assert main(["best", "study=grid", "top=3", "bootstrap=50"]) == 0
    assert after_sweep == 1, calls
    assert len(calls) <= 2, calls  # best adds one: the held-out part (data.part=heldout)
