"""The configuration reference, generated from ``conf/`` and the typed config, so it cannot drift.

Every leaf key of the composed config gets one row: its type (from the :mod:`._schema`
dataclasses), its default (the default composition's value) and what it is (the comment beside
the key in ``conf/``, continuation lines included; the first option of a group that comments the
key says it). Each group's options are listed with their file's first comment line. The docs
build (``mkdocs build --strict``, ``docs/_hooks.py``) puts this where ``docs/configuration.md``
says ``<!-- config-reference -->``; a test checks every key has its row and its words.

Example::

    from meminject.config._reference import config_reference
    print(config_reference()[:60])
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

from ..core._paths import conf_dir
from ._build import load_run_config
from ._schema import RunConfig

__all__ = ["config_reference", "key_comments", "key_types", "MARKER"]

MARKER = "<!-- config-reference -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<value>[^#]*?)\s*(?:#\s?(?P<comment>.*))?$")
_CONTINUED = re.compile(r"^ {2,}#\s?(?P<comment>.*)$")


def _file_comments(path: Path, prefix: str) -> dict[str, str]:
    """``dotted key -> comment`` of one YAML file (its ``defaults`` list skipped)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    last: str | None = None
    for line in path.read_text().splitlines():
        continued = _CONTINUED.match(line)
        if continued and last is not None:
            comments[last] = f"{comments.get(last, '')} {continued['comment'].strip()}".strip()
            continue
        match = _KEY.match(line)
        if match is None or line.lstrip().startswith("-"):
            last = None if not line.strip() or not line.lstrip().startswith("#") else last
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([prefix, *(k for _, k in stack), match["key"]]).strip(".")
        if match["key"] == "defaults":
            last = None
            continue
        if not match["value"].strip():  # a mapping opens here
            stack.append((indent, match["key"]))
        comments[key] = (match["comment"] or "").strip()
        last = key
    return comments


def key_comments() -> dict[str, str]:
    """``dotted key -> what it is`` over ``conf/config.yaml`` and every option of every group:
    the default option's words first (its ``_`` includes next), then the other options'."""
    root = conf_dir()
    comments = {k: v for k, v in _file_comments(root / "config.yaml", "").items() if v}
    chosen = _default_options(root / "config.yaml")
    for group in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        first = group / f"{chosen.get(group.name)}.yaml"
        rest = sorted(group.glob("*.yaml"), key=lambda f: (not f.stem.startswith("_"), len(f.stem), f.stem))
        for option in [first, *rest] if first.exists() else rest:
            for key, text in _file_comments(option, group.name).items():
                if text and not comments.get(key):
                    comments[key] = text
    return comments


def _default_options(config: Path) -> dict[str, str]:
    """``group -> option`` of ``config.yaml``'s defaults list."""
    found = re.findall(r"^\s*-\s*(\w+):\s*([\w.-]+)", config.read_text(), re.MULTILINE)
    return dict(found)


def key_types(cls: type = RunConfig, prefix: str = "") -> dict[str, str]:
    """``dotted key -> type`` of every leaf field, read from the dataclasses' annotations."""
    hints = typing.get_type_hints(cls)
    types: dict[str, str] = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)] or (
            [hint] if dataclasses.is_dataclass(hint) else []
        )
        if inner:
            types.update(key_types(inner[0], f"{prefix}{field.name}."))
        else:
            types[f"{prefix}{field.name}"] = _type_name(hint)
    return types


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in args)
    return getattr(hint, "__name__", str(hint))


def _options(group: Path) -> list[tuple[str, str]]:
    """(option, what it is) of a config group: its ``description``, else its opening comment."""
    rows = []
    for option in sorted(group.glob("*.yaml")):
        if option.stem.startswith("_"):
            continue
        lines = option.read_text().splitlines()
        described = next((m for line in lines if (m := re.match(r'^description:\s*"(.*)"', line))), None)
        opening = " ".join(line.lstrip("# ").strip() for line in _opening(lines))
        rows.append((option.stem, described[1] if described else opening))
    return rows


def _opening(lines: list[str]) -> list[str]:
    block = []
    for line in lines:
        if not line.startswith("#"):
            break
        block.append(line)
    return block


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    """The reference as Markdown: each group's options, then a table of its keys."""
    defaults = load_run_config([]).flat()
    tiny = load_run_config(["model=tiny"]).flat()
    comments, types = key_comments(), key_types()
    root = conf_dir()
    out: list[str] = []
    sections = ["", *(f.name for f in dataclasses.fields(RunConfig) if f"{f.name}" not in types)]
    for section in sections:
        keys = [k for k in types if (k.split(".")[0] == section) if section] or [k for k in types if "." not in k]
        title = f"`{section}`" if section else "top level (`conf/config.yaml`)"
        out.append(f"### {title}\n")
        if section and (root / section).is_dir():
            rows = _options(root / section)
            default = defaults.get(f"{section}.name")
            out.append("| option | what it is |\n|---|---|")
            out.extend(f"| `{section}={name}` | {_cell(text)} |" for name, text in rows)
            out.append("")
            if default is not None:
                out.append(f"Defaults below are those of `{section}={default}`.\n")
        out.append("| key | type | default | what it is |\n|---|---|---|---|")
        for key in keys:
            value = defaults.get(key, tiny.get(key))
            shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
            out.append(f"| `{key}` | {_cell(types[key])} | `{_cell(shown)}` | {_cell(comments.get(key, ''))} |")
        out.append("")
    return "\n".join(out)
