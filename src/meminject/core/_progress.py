"""Progress on stderr: one stage line per long step, and bars for the steps that count.

A stage line (:func:`stage`: loading the model, the clean pass, ``best``'s held-out check) is
printed on stderr also when it is not a terminal, so a log or a pipe says what the minutes go
to. Bars (``eval``, ``best``'s held-out check) are shown on a terminal; off in logs and pipes
(where a bar is a wall of redrawn lines before the one error line a failure should print).
``MEMINJECT_PROGRESS=1`` forces them on, ``0`` off. Sweeps have their own switch
(``progress=true|false``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["progress_bar", "stage"]


def progress_bar(total: int, desc: str, unit: str) -> Any:
    from tqdm.auto import tqdm

    forced = os.environ.get("MEMINJECT_PROGRESS", "").strip()
    disable = None if forced not in ("0", "1") else forced == "0"  # None: tqdm's "off unless a terminal"
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True, disable=disable)


def stage(text: str) -> None:
    """One line on stderr saying what starts now (above any bar, which tqdm redraws below it)."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()
