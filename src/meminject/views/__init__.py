"""The views layer: the commands a person runs, and what they print and draw.

``eval`` (one injection), ``inspect`` (the head projector), ``ui`` (the MLflow UI); the sweep
commands come from :mod:`meminject.sweep`. :mod:`meminject.cli` only parses and dispatches.
"""

from ..sweep import cmd_best, cmd_repair, cmd_sweep, cmd_worker, help_epilog
from ._eval import cmd_eval, eval_epilog
from ._inspect_command import cmd_inspect
from ._ui import cmd_ui

__all__ = [
    "cmd_eval",
    "eval_epilog",
    "cmd_inspect",
    "cmd_ui",
    "cmd_sweep",
    "cmd_worker",
    "cmd_best",
    "cmd_repair",
    "help_epilog",
]
