"""Where a study lives: its Optuna storage, and how it survives what goes wrong.

=================  ======================================================================
``_storage``       opening the storage (journal file, SQLite, PostgreSQL), finding a study
``_journal``       a torn or damaged journal file: found, said in one line, repaired
``_recovery``      heartbeats on the journal; a dead worker's trials failed and re-run
``_optuna``        the only use of Optuna's private API (batched writes, queued trials,
                   a bounded view for the sampler), so an Optuna upgrade touches one file
=================  ======================================================================

Example::

    from meminject.store import open_storage, load_study
    storage = open_storage("/tmp/optuna.journal")
"""

from ._journal import JournalDamage, repair_torn_journal
from ._recovery import DEFAULT_HEARTBEAT, recover_stale_trials
from ._storage import default_storage_url, load_study, open_storage, study_names

__all__ = [
    "open_storage",
    "default_storage_url",
    "load_study",
    "study_names",
    "JournalDamage",
    "repair_torn_journal",
    "DEFAULT_HEARTBEAT",
    "recover_stale_trials",
]
