"""``meminject eval``: one injection over a dataset, as a table, files and one MLflow run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from ..core._errors import MemInjectError, first_line

__all__ = ["cmd_eval", "run_eval", "eval_epilog", "batch_progress", "progress_bar_for", "default_output_dir"]


def eval_epilog() -> str:
    """``eval --help``'s keys, every enumerated value from the config's own lists (no type left out)."""
    from ..config._choices import ENCODINGS, MEMORY_TYPES, SITES
    from ..core._paths import conf_dir

    presets = sorted(p.stem for p in (conf_dir() / "memory").glob("*.yaml") if not p.stem.startswith("_"))
    return f"""keys (key=value, Hydra syntax; unknown keys are refused):
  model=NAME data=NAME memory=NAME     config groups (conf/<group>/NAME.yaml; ./conf/<group>/ adds your own)
  memory=NAME                          {", ".join(presets)}
  injection.layer=L injection.tweak=T  where and how strongly (τ); injection.site={"|".join(SITES)}, injection.head=H
  memory.type={"|".join(MEMORY_TYPES)}  (*_matched: the plain control's words at the correct memory's norm; shuffled: another prompt's memory)
  memory.encoding={"|".join(ENCODINGS)}
  metric.answer=first_token|sequence   metric.specific=true (also the shuffled memory: specific gain)
  data.limit=N data.sample=N data.split=0.7 data.part=all|train|heldout
  tracking.enabled=false tracking.uri=URL  perf.max_batch_tokens=N  seed=N
every key and its meaning: conf/config.yaml and conf/<group>/*.yaml (README: Configuration)"""


def default_output_dir(command: str, tag: str) -> Path:
    from ..core._paths import outputs_dir

    return outputs_dir(command) / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}"


def _data_label(data_cfg, dataset) -> str:
    """How the data is named in a header: the file for data.path (not the default preset's name)."""
    if data_cfg.path:
        part = data_cfg.part
        return Path(str(data_cfg.path)).name + ("" if part == "all" else f":{part}")
    return dataset.name


def progress_bar_for(desc: str, total: int):
    """A tqdm bar on stderr (stdout stays the results)."""
    from ..core._progress import progress_bar

    return progress_bar(total, desc, "prompt")


def batch_progress(bar):
    """The callback for ``Evaluator.progress(stage, done, total)``: one call per batch of a
    pass (``stage`` e.g. "clean" or "injected"); the bar shows that pass's batches."""

    def report(stage: str, done: int, total: int) -> None:
        if bar.disable:  # not a terminal (see meminject.progress)
            return
        if bar.total != total or bar.unit != "batch":
            bar.reset(total=total)
            bar.unit = "batch"
        bar.set_description_str(f"{bar.desc.split(' [')[0]} [{stage}]", refresh=False)
        bar.n = done
        bar.refresh()

    return report


def cmd_eval(overrides: Sequence[str]) -> int:
    from ..config import load_run_config
    from ..engine._models import resolve_depth

    return run_eval(resolve_depth(load_run_config(overrides)))  # a relative depth names a layer of the model


def run_eval(
    cfg, *, fixed_norms: dict[int, float] | None = None, extra: dict | None = None, tags: dict | None = None
) -> int:
    """``eval``'s work on a resolved config (``meminject apply`` passes an export's residual norm
    as ``fixed_norms``, its record as ``extra`` summary fields and ``tags`` for the MLflow run)."""
    from ..data._dataset import load_dataset
    from ..engine._evaluation import Evaluator, InjectionSpec
    from ..engine._models import config_shape, load_model
    from ..tracking._probe import probe_database
    from ..tracking._tracker import log_eval_run, probe_server, redact, tracking_uri

    spec = InjectionSpec.from_config(cfg)
    spec.validate(
        config_shape(cfg.model)
    )  # the layer and head against the model's config, before anything loads or is written
    if cfg.tracking.enabled:
        probe_server(tracking_uri(cfg))  # an unreachable tracking server is refused before any work
        probe_database(tracking_uri(cfg))  # and so is a database store that refuses the login
    dataset = load_dataset(cfg.data)
    model = load_model(cfg.model)
    spec.validate(model)
    started, started_ms = time.perf_counter(), int(time.time() * 1000)  # the run's duration is the evaluation's
    with progress_bar_for(f"eval {_data_label(cfg.data, dataset)}", len(dataset)) as bar:
        evaluator = Evaluator.from_config(model, dataset, cfg)
        evaluator.fixed_norms.update(fixed_norms or {})
        if hasattr(evaluator, "progress"):  # batch-level progress, where the engine reports it
            evaluator.progress = batch_progress(bar)
        result = evaluator.evaluate(spec, cfg.memory, specific=cfg.metric.specific)
        bar.update(bar.total - bar.n)
    wall = time.perf_counter() - started
    out_dir = (
        Path(cfg.output_dir)
        if cfg.output_dir
        else default_output_dir("eval", f"{model.name}-L{spec.layer}-t{spec.tweak:g}-{spec.encoding}")
    )
    summary = _save_results(out_dir, cfg, model, dataset, result, wall, extra)
    _print_result(cfg, model, dataset, spec, result, wall, out_dir)
    if cfg.tracking.enabled:
        try:
            run_id = log_eval_run(cfg, result, summary, out_dir, started_ms, started_ms + round(wall * 1000), tags)
        except Exception as exc:  # noqa: BLE001 - MLflow/network errors of many kinds; the results are safe on disk
            raise MemInjectError(
                f"results saved in {out_dir}, but MLflow at {redact(tracking_uri(cfg))} failed: {redact(first_line(exc, 200))}"
            ) from exc
        print(f"  MLflow run {run_id}")
    return 0


def _save_results(out_dir: Path, cfg, model, dataset, result, wall: float, extra: dict | None = None) -> dict:
    """The per-prompt table, the config and the summary into ``out_dir``; returns the summary."""
    from ..config import to_yaml
    from ..engine._memories import word_source
    from ..tracking._tracker import redacted_container

    # Write everything into a temporary folder and rename it: no half-written results.
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    result.per_prompt.to_csv(tmp_dir / "per_prompt.csv", index=False)
    (tmp_dir / "config.yaml").write_text(to_yaml(redacted_container(cfg)))
    summary = {
        **result.summary,
        "eval_seconds": wall,
        "hook": result.hooks[0],
        "model": model.name,
        "weights": model.weights,
        "dataset": dataset.name,
        "dataset_hash": dataset.content_hash,
        "word_source": word_source(cfg.memory),
        "n_prompts": len(dataset),
        **(extra or {}),
    }
    (tmp_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    return summary


def _print_result(cfg, model, dataset, spec, result, wall: float, out_dir: Path) -> None:
    """The evaluation's header, mean probabilities and gains on stdout."""
    s = result.summary
    print(
        f"{model.name} ({model.weights} weights) · {_data_label(cfg.data, dataset)} ({len(dataset)} prompts) · {result.hooks[0]} · τ={spec.tweak:g} · {spec.memory_type}/{spec.encoding} · positions={spec.positions}"
    )
    print(
        f"  P(answer) before {s['mean_prob_before']:.4f}   after {s['mean_prob_after']:.4f}   explicit {s['mean_prob_explicit']:.4f}"
    )
    print(
        f"  mean gain {s['mean_gain']:+.4f}   median gain {s['median_gain']:+.4f}   mean % increase {s['mean_percent_increase']:+.1f}   improved {s['frac_improved']:.0%}"
    )
    if "specific_gain" in s:  # metric.specific=true: the same site with another prompt's memory
        print(
            f"  shuffled memory's gain {s['shuffled_gain']:+.4f}   specific gain {s['specific_gain']:+.4f} (gain − shuffled, per prompt)"
        )
    print(f"  {wall:.2f} s · per-prompt table: {out_dir / 'per_prompt.csv'}")
