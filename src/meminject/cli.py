"""``meminject``: the command line.

    meminject eval   [key=value ...]   one injection configuration over a dataset
    meminject sweep  [sweep=NAME] [workers=N] [key=value ...]   search injection sites
    meminject worker study=NAME [storage=URL]   join a running sweep from another shell/machine
    meminject best   [study=NAME] [top=10]   ranked injection sites of a study

Every problem the user can fix ends in one line ``meminject: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import MemInjectError

__all__ = ["main"]

log = logging.getLogger("meminject")

HELP = {
    "eval": "Evaluate one injection (layer, τ, memory, encoding, site) over a dataset; prints a summary, writes the per-prompt CSV.",
    "sweep": "Search injection sites with Optuna over a named search space in sweeps/ (sweep=NAME); every trial is tracked in MLflow.",
    "worker": "Join an existing sweep's study (study=NAME storage=URL) as one more worker process.",
    "best": "Print the ranked injection sites of a study (study=NAME top=K) and write them as CSV.",
}

EPILOG = """examples:
  meminject eval model=smollm2-135m data=handwritten injection.layer=25 injection.tweak=4 memory.encoding=unembed
  meminject sweep sweep=smoke
  meminject sweep sweep=tpe data=handwritten n_trials=40 workers=2
  meminject best top=10

Overrides use Hydra syntax (key=value); config groups: model, data, memory, injection, tracking, perf.
See README.md for the search-space grammar and running many workers."""


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:  # pragma: no cover
        pass
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("transformers", "transformer_lens", "httpx", "urllib3", "alembic", "mlflow", "optuna", "huggingface_hub", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*TransformerBridge.*")


def _default_output_dir(command: str, tag: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("outputs") / command / f"{stamp}-{tag}"


def cmd_eval(overrides: Sequence[str]) -> int:
    from .config import compose_config, to_yaml
    from .data import load_dataset
    from .evaluation import Evaluator, InjectionSpec
    from .models import load_model
    from .tracking import log_eval_run

    cfg = compose_config(overrides)
    spec = InjectionSpec.from_config(cfg)
    spec.validate()  # model-independent checks before the model loads
    dataset = load_dataset(cfg.data)
    model = load_model(cfg.model)
    spec.validate(model)
    started = time.perf_counter()
    evaluator = Evaluator.from_config(model, dataset, cfg)
    result = evaluator.evaluate(spec, cfg.memory)
    wall = time.perf_counter() - started
    out_dir = Path(cfg.output_dir) if cfg.output_dir else _default_output_dir("eval", f"{model.name}-L{spec.layer}-t{spec.tweak:g}-{spec.encoding}")
    # Write everything into a temporary folder and rename it: no half-written results.
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    result.per_prompt.to_csv(tmp_dir / "per_prompt.csv", index=False)
    (tmp_dir / "config.yaml").write_text(to_yaml(cfg))
    summary = {**result.summary, "eval_seconds": wall, "hook": result.hooks[0], "model": model.name, "weights": model.weights, "dataset": dataset.name, "dataset_hash": dataset.content_hash}
    (tmp_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    s = result.summary
    print(f"{model.name} ({model.weights} weights) · {dataset.name} ({len(dataset)} prompts) · {result.hooks[0]} · τ={spec.tweak:g} · {spec.memory_type}/{spec.encoding} · positions={spec.positions}")
    print(f"  P(answer) before {s['mean_prob_before']:.4f}   after {s['mean_prob_after']:.4f}   explicit {s['mean_prob_explicit']:.4f}")
    print(f"  mean gain {s['mean_gain']:+.4f}   median gain {s['median_gain']:+.4f}   mean % increase {s['mean_percent_increase']:+.1f}   improved {s['frac_improved']:.0%}")
    print(f"  {wall:.2f} s · per-prompt table: {out_dir / 'per_prompt.csv'}")
    if cfg.tracking.enabled:
        run_id = log_eval_run(cfg, result, summary, out_dir)
        print(f"  MLflow run {run_id}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meminject", description="Hyperparameter search and tracking for memory injections in transformer LMs.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in HELP.items():
        p = sub.add_parser(name, help=text, description=text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (Hydra syntax)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _quiet_libraries()
    commands = {"eval": cmd_eval}
    try:
        from . import search

        commands.update({"sweep": search.cmd_sweep, "worker": search.cmd_worker, "best": search.cmd_best})
    except ImportError:
        pass
    try:
        return commands[args.command](args.overrides)
    except MemInjectError as exc:
        print(f"meminject: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("meminject: interrupted; finished trials are kept, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
