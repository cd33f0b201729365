"""The configuration reference (docs/configuration.md, generated at build time) has a row with
words for every key of the typed config, and its defaults are the composed ones."""

from __future__ import annotations

import re

from conftest import ROOT
from meminject.config import load_run_config
from meminject.core._paths import conf_dir
from meminject.config._reference import MARKER, config_reference, key_comments, key_types


def test_every_key_of_the_typed_config_has_a_comment_in_conf():
    types, comments = key_types(), key_comments()
    assert len(types) > 50
    missing = [key for key in types if not comments.get(key)]
    assert not missing, f"keys without a comment in conf/ (add one beside the key): {missing}"


def test_every_key_has_one_row_with_its_default():
    text = config_reference()
    defaults = load_run_config([]).flat()
    rows = dict(re.findall(r"^\| `([\w.]+)` \| [^|]+ \| `([^`]*)` \|", text, re.MULTILINE))
    assert set(rows) == set(key_types())
    for key in ("injection.layer", "injection.tweak", "memory.encoding", "metric.specific", "perf.max_batch_tokens"):
        shown = str(defaults[key]).lower() if isinstance(defaults[key], bool) else str(defaults[key])
        assert rows[key] == shown, key


def test_every_option_of_every_group_is_listed():
    text = config_reference()
    for option in conf_dir().glob("*/*.yaml"):
        if not option.stem.startswith("_"):
            assert f"`{option.parent.name}={option.stem}`" in text, option


def test_the_configuration_page_asks_for_the_reference():
    assert MARKER in (ROOT / "docs" / "configuration.md").read_text()
