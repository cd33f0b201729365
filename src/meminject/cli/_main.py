"""``meminject``: the command line.

    meminject eval   [key=value ...]   one injection configuration over a dataset
    meminject sweep  [sweep=NAME] [workers=N] [key=value ...]   search injection sites
    meminject worker study=NAME [storage=URL]   join a running sweep from another shell/machine
    meminject best   [study=NAME] [top=10]   ranked injection sites of a study
    meminject export study=NAME [rank=1 | site=LABEL] [out=DIR]   one ranked site as a self-describing injection
    meminject apply  injection=DIR [data=...] [key=value ...]   an exported injection over any dataset (as eval)
    meminject generate injection=DIR prompt=... memory=... [answer=...]   continuations without and with it
    meminject repair [storage=PATH] [drop_line=N]   check a study journal, drop a corrupt record
    meminject ui     [study=NAME] [port=5000] [open=true]   the MLflow UI, opened on one study's runs table

Every problem the user can fix ends in one line ``meminject: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Sequence

from ..core._errors import MemInjectError, error_line

__all__ = ["main"]

log = logging.getLogger("meminject")

HELP = {
    "eval": "Evaluate one injection (layer, τ, memory, encoding, site) over a dataset; prints a summary, writes the per-prompt CSV.",
    "sweep": "Search injection sites with Optuna over a named search space in sweeps/ (sweep=NAME); every trial is tracked in MLflow.",
    "worker": "Join an existing sweep's study (study=NAME storage=URL) as one more worker process.",
    "best": "Print the ranked injection sites of a study (study=NAME top=K) and write them as CSV.",
    "export": "Write one ranked site of a study (study=NAME rank=N or site=LABEL) as a self-describing injection folder (injection.json), logged on the study's MLflow run; without study lists the sites.",
    "apply": "Evaluate an exported injection (injection=DIR) on any dataset, as eval does (per-prompt CSV, MLflow run).",
    "generate": "Continue a prompt without and with an exported injection (injection=DIR prompt=... memory=...), with top-k next tokens and P(answer).",
    "repair": "Check a study journal (storage=PATH) and name a corrupt record; drop_line=N removes that record after a backup.",
    "inspect": "Project every layer's (and head's) attention output into vocabulary space for one prompt (the paper's head projector).",
    "ui": "Start the MLflow UI on this project's tracking store (127.0.0.1) and print the URL of one study's runs table (study=NAME); Ctrl-C stops it.",
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
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" bars
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:  # pragma: no cover
        pass
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in (
        "transformers",
        "transformer_lens",
        "httpx",
        "urllib3",
        "alembic",
        "mlflow",
        "optuna",
        "huggingface_hub",
        "torch",
        "matplotlib",  # "generated new fontManager" on a fresh machine
        "PIL",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    # MLflow logs each failed store commit with its traceback before raising; meminject says it in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
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


def _epilog(name: str) -> str:
    if name in ("export", "apply", "generate"):
        from ._apply import apply_epilog

        return apply_epilog(name) + "\n\n" + EPILOG
    if name in ("sweep", "worker", "best", "repair"):
        try:
            from ._sweep import help_epilog

            return help_epilog(name) + "\n\n" + EPILOG
        except Exception:  # noqa: BLE001 - help must print even if a user preset is broken
            return EPILOG
    if name == "ui":
        from ._ui import UI_SETTINGS

        width = max(map(len, UI_SETTINGS)) + 2
        keys = "\n".join(f"  {k + '=':<{width}} {v}" for k, v in UI_SETTINGS.items())
        return f"ui keys (key=value):\n{keys}\n  tracking.uri=URL  the store to show (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db of this folder)\n\n{EPILOG}"
    if name == "eval":
        from ._eval import eval_epilog

        return eval_epilog() + "\n\n" + EPILOG
    return EPILOG


def _build_parser(wanted: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``wanted``'s epilog (its keys) is built, so a command imports only its own."""
    parser = argparse.ArgumentParser(
        prog="meminject",
        description="Hyperparameter search and tracking for memory injections in transformer LMs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in HELP.items():
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=_epilog(name) if name == wanted else EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("overrides", nargs="*", metavar="key=value", help="settings and config overrides (listed below)")
        if name == "inspect":
            p.add_argument("--prompt", help="the prompt to inspect (default: the dataset row given by --row)")
            p.add_argument("--row", type=int, help="a dataset row (the CSV line number shown in per-prompt tables)")
            p.add_argument("--answer", help="answer text: adds its first token's rank and logit per layer/head")
            p.add_argument("--memory", help="memory text for --inject (default: the row's explicit entity)")
            p.add_argument("--heads", action="store_true", help="also project every head's output (hook_result)")
            p.add_argument("--all-positions", action="store_true", help="every position, not only the last")
            p.add_argument(
                "--inject", action="store_true", help="also show the view with the configured injection, side by side"
            )
            p.add_argument("--top", type=int, default=5, help="top-k tokens per layer/head (default 5)")
            p.add_argument(
                "--rows",
                type=int,
                default=15,
                help="rows printed, best first (by the answer's rank, else the top logit; default 15; 0: all; the CSV holds all)",
            )
            p.add_argument("--out", help="output folder (default outputs/inspect/<time>)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before any heavy import (torch, optuna, mlflow): Ctrl-C at any moment is one line and 130.
    # SIGTERM (a scheduler, `kill`) stops as cleanly as Ctrl-C: trials failed, runs closed.
    from ..core import _interrupts as interrupts

    interrupts.install()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return interrupts.interrupted_exit()


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_help = any(a in ("-h", "--help") for a in argv)  # a command's keys are listed for --help only
    parser = _build_parser(next((a for a in argv if not a.startswith("-")), None) if wants_help else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _quiet_libraries()
    try:
        if args.command == "inspect":
            from ._inspect import cmd_inspect

            return cmd_inspect(args)
        return _command(args.command)(args.overrides)
    except MemInjectError as exc:
        print(f"meminject: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _USER_FIXABLE_ERRNOS:
            raise
        # a full disk, a read-only or forbidden folder: the user's to fix, and what is recorded stays
        print(
            f"meminject: error: {error_line(exc)} (free space or fix the folder's permissions, then rerun the same command: finished trials are kept)",
            file=sys.stderr,
        )
        return 2


_COMMANDS = {  # name: (module of this package, function); imported when run
    "eval": ("_eval", "cmd_eval"),
    "ui": ("_ui", "cmd_ui"),
    "sweep": ("_sweep", "cmd_sweep"),
    "worker": ("_sweep", "cmd_worker"),
    "best": ("_best", "cmd_best"),
    "repair": ("_repair", "cmd_repair"),
    "export": ("_export", "cmd_export"),
    "apply": ("_apply", "cmd_apply"),
    "generate": ("_apply", "cmd_generate"),
}


def _command(name: str):
    """The command's function: only its module is imported (``ui`` needs no torch)."""
    import importlib

    module, function = _COMMANDS[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


_USER_FIXABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
