"""``meminject repair``: check a study journal, and drop a corrupt record from it on request.

Opening a journal already repairs a torn tail (see :mod:`._journal`); a record broken in the
middle of the file (a flipped byte) stops every study in it, and only a person can decide to
give up that record. Without ``drop_line`` the command only looks: it names the corrupt line
and its byte offset, or says the journal is whole, and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..core._errors import ConfigError
from ..store._journal import JournalDamage, damage_line, drop_record, repair_torn_journal
from ..search._keys import as_positive_int, parse_settings
from ..store._storage import default_storage_url, open_storage, study_names

__all__ = ["REPAIR_SETTINGS", "cmd_repair"]

REPAIR_SETTINGS = {
    "storage": "the study journal file (default ./mlruns/optuna.journal)",
    "drop_line": "remove this line of the journal, a record that does not parse, after backing the file up (the line `meminject repair` names)",
}


def cmd_repair(args: Sequence[str]) -> int:
    settings, _ = parse_settings(args, REPAIR_SETTINGS, "repair")
    url = settings.get("storage") or default_storage_url()
    if "://" in url:
        raise ConfigError(f"repair works on a journal file, not on {url.split('://')[0]}:// storage")
    drop = as_positive_int(settings["drop_line"], "drop_line") if "drop_line" in settings else None
    path = Path(url)
    if not path.is_file():
        raise ConfigError(f"no study journal at {path}; name it with storage=PATH")
    if drop is not None:
        try:
            print(drop_record(path, drop))
        except JournalDamage as exc:
            raise ConfigError(f"{exc}; nothing was changed") from exc
    damage = damage_line(path)
    if damage is not None:
        raise ConfigError(damage)
    torn = repair_torn_journal(path)
    if torn:
        print(torn)
    names = study_names(open_storage(url), url)
    print(
        f"study journal {path} reads whole: {len(names)} stud{'y' if len(names) == 1 else 'ies'} ({', '.join(names)})"
    )
    return 0
