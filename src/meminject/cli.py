"""``meminject``: the command line.

    meminject eval   [key=value ...]   one injection configuration over a dataset
    meminject sweep  [sweep=NAME] [workers=N] [key=value ...]   search injection sites
    meminject worker study=NAME [storage=URL]   join a running sweep from another shell/machine
    meminject best   [study=NAME] [top=10]   ranked injection sites of a study
    meminject ui     [port=5000] [open=true]   the MLflow UI, opened on the runs table

Every problem the user can fix ends in one line ``meminject: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import MemInjectError, error_line, first_line

__all__ = ["main"]

log = logging.getLogger("meminject")

HELP = {
    "eval": "Evaluate one injection (layer, τ, memory, encoding, site) over a dataset; prints a summary, writes the per-prompt CSV.",
    "sweep": "Search injection sites with Optuna over a named search space in sweeps/ (sweep=NAME); every trial is tracked in MLflow.",
    "worker": "Join an existing sweep's study (study=NAME storage=URL) as one more worker process.",
    "best": "Print the ranked injection sites of a study (study=NAME top=K) and write them as CSV.",
    "inspect": "Project every layer's (and head's) attention output into vocabulary space for one prompt (the paper's head projector).",
    "ui": "Start the MLflow UI on this project's tracking store (127.0.0.1) and print the URL of the experiment's runs table; Ctrl-C stops it.",
}

EPILOG = """examples:
  meminject eval model=smollm2-135m data=handwritten injection.layer=25 injection.tweak=4 memory.encoding=unembed
  meminject sweep sweep=smoke
  meminject sweep sweep=tpe data=handwritten n_trials=40 workers=2
  meminject best top=10
  meminject inspect --prompt "The first president of the United States fought in the" --answer " Revolutionary" --heads
  meminject ui open=true

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
    from .paths import outputs_dir

    return outputs_dir(command) / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}"


def _data_label(data_cfg, dataset) -> str:
    """How the data is named in a header: the file for data.path (not the default preset's name)."""
    if data_cfg.get("path"):
        part = str(data_cfg.get("part", "all"))
        return Path(str(data_cfg.path)).name + ("" if part == "all" else f":{part}")
    return dataset.name


def _progress_bar(desc: str, total: int):
    """A tqdm bar on stderr (stdout stays the results)."""
    from .progress import progress_bar

    return progress_bar(total, desc, "prompt")


def _batch_progress(bar):
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
    from .config import compose_config, to_yaml
    from .data import load_dataset
    from .evaluation import Evaluator, InjectionSpec
    from .models import load_model
    from .memories import word_source
    from .tracking import log_eval_run, probe_server, redact, redacted_config, tracking_uri

    cfg = compose_config(overrides)
    spec = InjectionSpec.from_config(cfg)
    spec.validate()  # model-independent checks before the model loads
    if cfg.tracking.enabled:
        probe_server(tracking_uri(cfg))  # an unreachable tracking server is refused before any work
    dataset = load_dataset(cfg.data)
    model = load_model(cfg.model)
    spec.validate(model)
    started = time.perf_counter()
    with _progress_bar(f"eval {_data_label(cfg.data, dataset)}", len(dataset)) as bar:
        evaluator = Evaluator.from_config(model, dataset, cfg)
        if hasattr(evaluator, "progress"):  # batch-level progress, where the engine reports it
            evaluator.progress = _batch_progress(bar)
        result = evaluator.evaluate(spec, cfg.memory)
        bar.update(bar.total - bar.n)
    wall = time.perf_counter() - started
    out_dir = Path(cfg.output_dir) if cfg.output_dir else _default_output_dir("eval", f"{model.name}-L{spec.layer}-t{spec.tweak:g}-{spec.encoding}")
    # Write everything into a temporary folder and rename it: no half-written results.
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    result.per_prompt.to_csv(tmp_dir / "per_prompt.csv", index=False)
    (tmp_dir / "config.yaml").write_text(to_yaml(redacted_config(cfg)))
    summary = {**result.summary, "eval_seconds": wall, "hook": result.hooks[0], "model": model.name, "weights": model.weights, "dataset": dataset.name, "dataset_hash": dataset.content_hash, "word_source": word_source(cfg.memory)}
    (tmp_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    s = result.summary
    print(f"{model.name} ({model.weights} weights) · {_data_label(cfg.data, dataset)} ({len(dataset)} prompts) · {result.hooks[0]} · τ={spec.tweak:g} · {spec.memory_type}/{spec.encoding} · positions={spec.positions}")
    print(f"  P(answer) before {s['mean_prob_before']:.4f}   after {s['mean_prob_after']:.4f}   explicit {s['mean_prob_explicit']:.4f}")
    print(f"  mean gain {s['mean_gain']:+.4f}   median gain {s['median_gain']:+.4f}   mean % increase {s['mean_percent_increase']:+.1f}   improved {s['frac_improved']:.0%}")
    print(f"  {wall:.2f} s · per-prompt table: {out_dir / 'per_prompt.csv'}")
    if cfg.tracking.enabled:
        try:
            run_id = log_eval_run(cfg, result, summary, out_dir)
        except Exception as exc:  # noqa: BLE001 - MLflow/network errors of many kinds; the results are safe on disk
            raise MemInjectError(f"results saved in {out_dir}, but MLflow at {redact(tracking_uri(cfg))} failed: {redact(first_line(exc, 200))}") from exc
        print(f"  MLflow run {run_id}")
    return 0


EVAL_EPILOG = """keys (key=value, Hydra syntax; unknown keys are refused):
  model=NAME data=NAME memory=NAME     config groups (conf/<group>/NAME.yaml; ./conf/<group>/ adds your own)
  injection.layer=L injection.tweak=T  where and how strongly (τ); injection.site=layer|head|head_subspace, injection.head=H
  memory.type=correct|pos|random|random_vector  memory.encoding=unembed|embed|layer
  metric.answer=first_token|sequence   data.limit=N data.sample=N data.split=0.7 data.part=all|train|heldout
  tracking.enabled=false tracking.uri=URL  perf.max_batch_tokens=N  seed=N
every key and its meaning: conf/config.yaml and conf/<group>/*.yaml (README: Configuration)"""


def _epilog(name: str) -> str:
    if name in ("sweep", "worker", "best"):
        try:
            from .sweep import help_epilog

            return help_epilog(name) + "\n\n" + EPILOG
        except Exception:  # noqa: BLE001 - help must print even if a user preset is broken
            return EPILOG
    if name == "ui":
        from .ui import UI_SETTINGS

        width = max(map(len, UI_SETTINGS)) + 2
        keys = "\n".join(f"  {k + '=':<{width}} {v}" for k, v in UI_SETTINGS.items())
        return f"ui keys (key=value):\n{keys}\n  tracking.uri=URL  the store to show (default: sqlite:///mlruns/mlflow.db of this folder)\n\n{EPILOG}"
    return (EVAL_EPILOG + "\n\n" + EPILOG) if name == "eval" else EPILOG


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meminject", description="Hyperparameter search and tracking for memory injections in transformer LMs.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in HELP.items():
        p = sub.add_parser(name, help=text, description=text, epilog=_epilog(name), formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="settings and config overrides (listed below)")
        if name == "inspect":
            p.add_argument("--prompt", help="the prompt to inspect (default: the dataset row given by --row)")
            p.add_argument("--row", type=int, help="a dataset row (the CSV line number shown in per-prompt tables)")
            p.add_argument("--answer", help="answer text: adds its first token's rank and logit per layer/head")
            p.add_argument("--memory", help="memory text for --inject (default: the row's explicit entity)")
            p.add_argument("--heads", action="store_true", help="also project every head's output (hook_result)")
            p.add_argument("--all-positions", action="store_true", help="every position, not only the last")
            p.add_argument("--inject", action="store_true", help="also show the view with the configured injection, side by side")
            p.add_argument("--top", type=int, default=5, help="top-k tokens per layer/head (default 5)")
            p.add_argument("--out", help="output folder (default outputs/inspect/<time>)")
    return parser


def cmd_inspect(args: argparse.Namespace) -> int:
    import pandas as pd

    from .config import compose_config
    from .errors import ConfigError
    from .evaluation import InjectionSpec
    from .inspect_heads import format_table, heatmap, project_attention_outputs, side_by_side
    from .memories import encode_memories, memory_texts
    from .models import load_model

    cfg = compose_config(args.overrides)
    prompt, answer, memory = args.prompt, args.answer, args.memory
    if args.row is not None:
        from .data import load_dataset

        frame = load_dataset(cfg.data).frame
        match = frame[frame.row == args.row]
        if match.empty:
            raise ConfigError(f"--row {args.row} is not in {cfg.data.name} (rows {int(frame.row.min())}..{int(frame.row.max())})")
        row = match.iloc[0]
        prompt = prompt or row.obscure_sentence
        answer = answer if answer is not None else row.answer
        memory = memory or row.explicit_entity
    if not prompt:
        raise ConfigError("inspect needs --prompt TEXT or --row N")
    if args.top < 1:
        raise ConfigError(f"--top {args.top} must be >= 1")
    if answer is not None and not answer.startswith(" "):
        answer = " " + answer  # the paper's answers follow a space
    model = load_model(cfg.model)
    before = project_attention_outputs(model, prompt, heads=args.heads, all_positions=args.all_positions, top_k=args.top, answer=answer)
    table, title = before.table, f"{model.name}: {prompt!r}"
    if args.inject:
        spec = InjectionSpec.from_config(cfg)
        spec.validate(model)
        if not memory:
            raise ConfigError("--inject needs --memory TEXT (or --row N for the row's explicit entity)")
        texts = memory_texts(pd.DataFrame({"explicit_entity": [memory], "row": [args.row or 0]}), cfg.memory)
        vector = encode_memories(model, texts, [args.row or 0], spec.encoding, spec.layer, max_batch_tokens=int(cfg.perf.max_batch_tokens))[0].to(model.device)
        after = project_attention_outputs(model, prompt, heads=args.heads, all_positions=args.all_positions, top_k=args.top, answer=answer,
                                          injection=(spec.layer, spec.tweak, vector, spec.positions))
        table = side_by_side(before.table, after.table)
        title += f" + {texts[0]!r} at L{spec.layer} τ={spec.tweak:g}"
    out_dir = Path(args.out) if args.out else _default_output_dir("inspect", model.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "projection.csv", index=False)
    figure = heatmap(after.table if args.inject else before.table, out_dir / "heads.png", title, answer=answer)
    print(title)
    print(format_table(table, answer is not None))
    print(f"table: {out_dir / 'projection.csv'} · figure: {figure}")
    if cfg.tracking.enabled:
        from mlflow.tracking import MlflowClient

        from .tracking import _experiment_id, tracking_uri

        client = MlflowClient(tracking_uri=tracking_uri(cfg))
        run = client.create_run(_experiment_id(client, str(cfg.tracking.experiment), tracking_uri(cfg)), run_name=f"inspect {model.name}", tags={"meminject.command": "inspect"})
        status = "FAILED"
        try:
            client.log_param(run.info.run_id, "prompt", prompt[:500])
            for path in (out_dir / "projection.csv", figure):
                client.log_artifact(run.info.run_id, str(path))
            status = "FINISHED"
        finally:  # the run is always closed
            client.set_terminated(run.info.run_id, status)
        print(f"MLflow run {run.info.run_id}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _quiet_libraries()
    # SIGTERM (a scheduler, `kill`) stops as cleanly as Ctrl-C: trials failed, runs closed.
    from . import interrupts

    interrupts.install()
    try:
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "eval":
            return cmd_eval(args.overrides)
        if args.command == "ui":
            from .ui import cmd_ui

            return cmd_ui(args.overrides)
        from . import sweep

        return {"sweep": sweep.cmd_sweep, "worker": sweep.cmd_worker, "best": sweep.cmd_best}[args.command](args.overrides)
    except MemInjectError as exc:
        print(f"meminject: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _USER_FIXABLE_ERRNOS:
            raise
        # a full disk, a read-only or forbidden folder: the user's to fix, and what is recorded stays
        print(f"meminject: error: {error_line(exc)} (free space or fix the folder's permissions, then rerun the same command: finished trials are kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        for signum in (signal.SIGINT, signal.SIGTERM):  # cleanup is done: a second signal must not cut the exit
            signal.signal(signum, signal.SIG_IGN)
        print("meminject: interrupted; finished trials are kept, rerun the same command to resume", file=sys.stderr)
        return 130


_USER_FIXABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
