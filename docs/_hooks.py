"""MkDocs hook: the configuration page's reference, generated at build time from ``conf/`` and
the typed config (:func:`meminject.config._reference.config_reference`), so it cannot drift."""

from __future__ import annotations

from meminject.config._reference import MARKER, config_reference


def on_page_markdown(markdown: str, **_: object) -> str:  # MkDocs passes page, config, files by name
    if MARKER in markdown:
        return markdown.replace(MARKER, config_reference())
    return markdown
