"""The commands a person runs: ``meminject eval | inspect | sweep | worker | best | repair |
export | apply | generate | ui``. :func:`main` parses and dispatches; each command lives in
its own module and imports only what it needs.

=================  ======================================================================
``_main``          the parser, one error line and exit 2 for bad input, the dispatch
``_eval``          ``eval``: one injection on a dataset
``_inspect``       ``inspect``: the head projector
``_sweep``         ``sweep`` and ``worker``
``_best``          ``best``: ranked sites and the held-out verdicts
``_repair``        ``repair``: a damaged journal
``_export``        ``export``: one site as ``injection.json``
``_apply``         ``apply`` and ``generate``: an exported injection on a plain model
``_ui``            ``ui``: the MLflow UI on the study's store
=================  ======================================================================
"""

from ._main import main

__all__ = ["main"]
