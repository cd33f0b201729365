"""Datasets of explicit/obscure prompt pairs (the paper's CSV schema).

Columns: ``explicit_sentence, obscure_sentence, explicit_entity, obscure_entity, answer``
(the 2WikiMultiHop files add an index column and ``fact1, fact2``; older files name
the sentences ``explicit_sent``/``obscure_sent``). Answers get the leading space the
paper adds, so the first answer token is the one the model would emit next.

Where a file comes from, in order: ``data.path``; the package (``demo``); a local copy in
``data.dir`` or ``$MEMINJECT_DATA_DIR``; the download cache; the upstream URL (checked
against a pinned SHA-256, then cached).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import logging
import os
import urllib.request
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config._choices import PARTS
from ..core._errors import ConfigError, DataError
from ..core._paths import cache_dir

__all__ = ["REQUIRED_COLUMNS", "Dataset", "load_dataset", "read_prompt_csv", "resolve_data_file"]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("explicit_sentence", "obscure_sentence", "explicit_entity", "obscure_entity", "answer")
_RENAMES = {"explicit_sent": "explicit_sentence", "obscure_sent": "obscure_sentence"}


@dataclass(frozen=True)
class FileRef:
    """Where a file comes from (the location keys of :class:`~meminject.config.DataConfig`)."""

    path: str | None
    source: str
    file: str | None
    dir: str | None
    url: str | None
    sha256: str | None


@dataclass
class Dataset:
    """Validated prompts: ``frame`` has the five schema columns plus ``row`` (1-based CSV line)."""

    name: str
    source: str
    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)

    @functools.cached_property
    def content_hash(self) -> str:
        """SHA-256 (first 16 hex) of the selected rows' schema columns: identifies what was evaluated.
        Computed once (every trial run logs it; on 1,000 prompts it costs milliseconds)."""
        payload = self.frame[list(REQUIRED_COLUMNS)].to_csv(index=False).encode("utf-8")
        return hashlib.sha256(payload).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, sha256: str | None) -> Path:
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
            out.write(response.read())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"cannot download {url} ({exc}); put the file in a folder and set data.dir=FOLDER "
            "or MEMINJECT_DATA_DIR, or pass data.path=FILE"
        ) from exc
    if sha256 and _sha256(tmp) != sha256:
        got = _sha256(tmp)
        tmp.unlink(missing_ok=True)
        raise DataError(f"downloaded {url} has SHA-256 {got}, expected {sha256}; refusing to use it")
    os.replace(tmp, target)
    return target


def resolve_data_file(cfg: Any) -> tuple[Path | None, str]:
    """Return (local path, source description) for the ``data`` config node."""
    if cfg.path:
        path = Path(str(cfg.path)).expanduser()
        if not path.is_file():
            raise DataError(f"data.path={path} does not exist or is not a file")
        return path, str(path)
    source = str(cfg.source)
    if source == "package":
        ref = resources.files("meminject.resources") / str(cfg.file)
        with resources.as_file(ref) as path:
            return Path(path), f"package:{cfg.file}"
    file_name = str(cfg.file)
    for folder in (cfg.dir, os.environ.get("MEMINJECT_DATA_DIR")):
        if folder and (Path(str(folder)).expanduser() / file_name).is_file():
            path = Path(str(folder)).expanduser() / file_name
            return path, str(path)
    cached = cache_dir() / "data" / file_name
    if cached.is_file():
        pinned = cfg.sha256
        if pinned and _sha256(cached) != pinned:  # the cache is ours: it must still be what was verified
            raise DataError(
                f"cached {cached} has SHA-256 {_sha256(cached)}, expected {pinned}; delete it to download it again"
            )
        return cached, str(cached)
    if not cfg.url:
        raise DataError(f"data file {file_name} not found; set data.dir or MEMINJECT_DATA_DIR, or pass data.path=FILE")
    cached.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", cfg.url)
    return _download(str(cfg.url), cached, cfg.sha256), str(cfg.url)


def _record_lines(text: str, n_records: int) -> list[int]:
    """The file line on which each data record starts (a quoted field may hold newlines, and
    blank lines are skipped, so record k is not always on line k + 1)."""
    reader = csv.reader(io.StringIO(text))
    starts, line = [], 1
    for record in reader:
        if record:
            starts.append(line)
        line = reader.line_num + 1
    starts = starts[1:]  # the header
    return starts if len(starts) == n_records else list(range(2, n_records + 2))


def read_prompt_csv(path: Path) -> pd.DataFrame:
    """Read and validate one CSV; every problem names the file, the row and the column."""
    try:
        raw = path.read_bytes()
    except OSError as exc:  # data.file names nothing, or a folder (data.file= ): one line, not a traceback
        what = "is a folder, not a CSV file" if path.is_dir() else f"cannot be read ({exc.strerror or exc})"
        raise DataError(f"{path} {what}: check data.file or data.path (data=NAME picks a packaged dataset)") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 (save the file as UTF-8)") from exc
    if not text.strip():
        raise DataError(f"{path}: file is empty (expected a header with columns {', '.join(REQUIRED_COLUMNS)})")
    header = [h.strip() for h in next(csv.reader(io.StringIO(text)), [])]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:  # pandas would rename the copy to "answer.1" and silently use the first
        raise DataError(f"{path}: column {repeated[0]!r} appears more than once in the header; keep one")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=True)
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: malformed CSV ({str(exc).strip().splitlines()[-1]})") from exc
    frame = frame.rename(columns={k: v for k, v in _RENAMES.items() if k in frame.columns})
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        hint = ""
        if len(frame.columns) == 1 and any(sep in frame.columns[0] for sep in (";", "\t", "|")):
            hint = " (the file seems to use another delimiter; meminject reads comma-separated files)"
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}{hint}")
    if frame.empty:
        raise DataError(f"{path}: header only, no prompt rows")
    frame = frame[list(REQUIRED_COLUMNS)].copy()
    frame.insert(0, "row", _record_lines(text, len(frame)))  # each prompt's 1-based file line
    for column in REQUIRED_COLUMNS:
        values = frame[column]
        bad = values.isna() | (values.astype(str).str.strip() == "")
        if bad.any():
            first = int(frame.loc[bad, "row"].iloc[0])
            raise DataError(f"{path}: line {first}, column {column}: empty or NaN value ({int(bad.sum())} such rows)")
    duplicates = frame.duplicated(subset=list(REQUIRED_COLUMNS), keep="first")
    if duplicates.any():
        rows = ", ".join(str(r) for r in frame.loc[duplicates, "row"].head(5))
        warnings.warn(f"{path}: {int(duplicates.sum())} duplicate row(s) (lines {rows}); they are kept", stacklevel=2)
    # The paper prepends a space to every answer: " War" is the token the model emits after "the".
    frame["answer"] = frame["answer"].map(lambda a: a if a.startswith(" ") else " " + a)
    return frame.reset_index(drop=True)


def load_dataset(cfg: Any) -> Dataset:
    """Load, validate and subset the dataset described by the ``data`` config node."""
    path, source = resolve_data_file(cfg)
    frame = read_prompt_csv(path)
    limit, sample = cfg.limit, cfg.sample
    if limit is not None and sample is not None:
        raise ConfigError("set data.limit or data.sample, not both")
    for key, value in (("limit", limit), ("sample", sample)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"data.{key}={value!r} must be a positive integer")
    if limit is not None:
        frame = frame.head(int(limit))
    if sample is not None:
        frame = frame.sample(n=min(int(sample), len(frame)), random_state=int(cfg.seed)).sort_index()
    frame = split_part(frame.reset_index(drop=True), cfg)
    # data.path replaces the preset's file, so it names the data too (else `demo` would label any CSV)
    name = path.stem if cfg.path else str(cfg.name or (path.stem if path else "data"))
    part = str(cfg.part)
    return Dataset(name=name if part == "all" else f"{name}:{part}", source=source, frame=frame.reset_index(drop=True))


def split_rows(n: int, train_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded train/held-out split of ``n`` prompts: (train positions, held-out positions), sorted."""
    order = np.random.default_rng([int(seed), 7]).permutation(n)
    n_train = int(round(train_fraction * n))
    if n >= 2:
        n_train = min(max(n_train, 1), n - 1)  # both parts non-empty
    return sorted(order[:n_train].tolist()), sorted(order[n_train:].tolist())


def split_part(frame: pd.DataFrame, cfg: Any) -> pd.DataFrame:
    """The ``data.part`` of the prompts under the seeded ``data.split`` (train fraction)."""
    part = str(cfg.part)
    if part not in PARTS:
        raise ConfigError(f"data.part={part!r} is not one of {', '.join(PARTS)}")
    if part == "all":
        return frame
    fraction = cfg.split
    if fraction is None:
        raise ConfigError(f"data.part={part} needs data.split (the train fraction, e.g. 0.7)")
    try:
        fraction = float(fraction)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"data.split={fraction!r} must be a number in (0, 1)") from exc
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.split={fraction} must be in (0, 1)")
    if len(frame) < 2:
        raise ConfigError(f"data.split needs at least 2 prompts, the selection has {len(frame)}")
    # its own seed: changing `seed` (control draws, samplers) must not move the held-out prompts
    train, heldout = split_rows(len(frame), fraction, int(cfg.split_seed))
    return frame.iloc[train if part == "train" else heldout]
