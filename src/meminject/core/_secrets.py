"""Where the secrets of URLs live: in this process and its environment, never in a store or an argv.

A study keeps its sweep's overrides redacted (``tracking.uri=postgresql://u:***@host/db``), a
spawned worker's command line carries no URL, and :func:`unmask` gives a redacted URL back
its secret when the full URL is known here: remembered by this process (:func:`remember`,
e.g. from the sweep's own command line), or in the environment variable that names it
(``MLFLOW_TRACKING_URI`` for the tracking store, ``MEMINJECT_STORAGE`` for the study storage).
Environment variables stay out of shell history and ``ps``; ``/proc/PID/environ`` is readable
by its owner only.
"""

from __future__ import annotations

import os

from ._errors import ConfigError
from ._redaction import MASK, redact

__all__ = ["TRACKING_ENV", "STORAGE_ENV", "remember", "unmask", "secret_env"]

TRACKING_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable: the tracking store, when tracking.uri is unset
STORAGE_ENV = "MEMINJECT_STORAGE"  # the Optuna storage URL, when storage= is not given

_KNOWN: dict[str, str] = {}  # redacted URL -> the full URL, for this process only


def remember(url: str | None) -> None:
    """Keep ``url``'s secret for this process, so its redacted form can be unmasked later."""
    if url and redact(url) != url:
        _KNOWN[redact(url)] = url


def unmask(url: str | None, env: str, key: str) -> str | None:
    """``url`` itself, or, when it is a redacted URL (its password ``***``), the full URL that
    redacts to it: remembered here, or the value of the environment variable ``env``. Refused in
    one line naming ``key`` and ``env`` when neither holds it."""
    if url is None or MASK not in url or redact(url) != url:
        return url
    for candidate in (_KNOWN.get(url), os.environ.get(env)):
        if candidate and redact(candidate) == url:
            return candidate
    raise ConfigError(
        f"{key}={url} comes without its secret (meminject never stores a password in the study); "
        f"export {env}='<the full URL>' in this shell and rerun"
    )


def secret_env(**urls: str | None) -> dict[str, str]:
    """Environment variables that hand full URLs to a child process (``MLFLOW_TRACKING_URI=...``):
    only those with a secret, so a child without one reads its usual defaults."""
    return {env: url for env, url in urls.items() if url and redact(url) != url}
