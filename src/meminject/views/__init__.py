"""The views layer: the commands a person runs, and what they print and draw.

``eval`` (one injection), ``inspect`` (the head projector), ``ui`` (the MLflow UI); the sweep
commands come from :mod:`meminject.sweep`. :mod:`meminject.cli` only parses and dispatches.
"""

from ..sweep import cmd_best, cmd_repair, cmd_sweep, cmd_worker, help_epilog
from ..sweep._export import EXPORT_SETTINGS, cmd_export
from ._apply import APPLY_SETTINGS, GENERATE_SETTINGS, cmd_apply, cmd_generate
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
    "cmd_export",
    "cmd_apply",
    "cmd_generate",
    "apply_epilog",
]


def apply_epilog(command: str) -> str:
    """The keys of export, apply and generate."""
    keys = {"export": EXPORT_SETTINGS, "apply": APPLY_SETTINGS, "generate": GENERATE_SETTINGS}[command]
    width = max(map(len, keys)) + 2
    lines = [f"{command} keys (key=value):"] + [f"  {k + '=':<{width}} {v}" for k, v in keys.items()]
    if command == "apply":
        lines.append("  any other key=value is a config override (data=NAME, data.path=FILE, data.limit=N, tracking.*)")
    return "\n".join(lines)
