"""MkDocs hooks: pages whose reference parts are generated at build time, so they cannot drift.

- ``<!-- config-reference -->`` (configuration.md): every group, option and key, from ``conf/``
  and the typed config (:func:`meminject.config._reference.config_reference`);
- ``<!-- layout-reference -->`` (layout.md): every package and module of ``src/meminject`` and
  every benchmark, each with the first line of its docstring.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from meminject.config._reference import MARKER, config_reference

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = "<!-- layout-reference -->"


def _first_line(path: Path) -> str:
    """The docstring's first paragraph, its reST roles and literals as Markdown code."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    text = doc.strip().split("\n\n")[0].replace("\n", " ")
    text = re.sub(r":\w+:`~?\.*([^`]+)`", r"`\1`", text)  # :class:`~._schema.RunConfig` -> `_schema.RunConfig`
    return text.replace("``", "`").replace("|", "\\|")


def layout_reference() -> str:
    """Markdown tables: each package of ``src/meminject`` with its modules, and the benchmarks."""
    src = ROOT / "src" / "meminject"
    out = ["| module | what it holds |", "|---|---|"]
    out += [f"| `{p.name}` | {_first_line(p)} |" for p in sorted(src.glob("*.py"))]
    for package in sorted(p for p in src.iterdir() if (p / "__init__.py").is_file() and not p.name.startswith("_")):
        out.append(f"| **`{package.name}/`** | {_first_line(package / '__init__.py')} |")
        out += [f"| `{package.name}/{p.name}` | {_first_line(p)} |" for p in sorted(package.glob("_*.py")) if p.name != "__init__.py"]
    out += ["", "| benchmark (run by hand) | what it measures |", "|---|---|"]
    out += [f"| `benchmarks/{p.name}` | {_first_line(p)} |" for p in sorted((ROOT / "benchmarks").glob("[!_]*.py"))]
    return "\n".join(line.replace("|  |", "| |") for line in out)


def on_page_markdown(markdown: str, **_: object) -> str:  # MkDocs passes page, config, files by name
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, config_reference())
    if LAYOUT in markdown:
        markdown = markdown.replace(LAYOUT, layout_reference())
    return markdown
