"""Pre-flight: `meminject sweep` checks its whole input before it writes anything.

Each bad input ends in exit 2 with one line, and the folder (the study journal, the MLflow
store, outputs/) is byte-for-byte what it was: nothing created, nothing touched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from meminject.cli import main

TINY = ["model=tiny", "model.device=cpu", "data.limit=6"]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


CASES = {
    "fixed layer out of range": (["injection.layer=999"], "injection.layer=999 is out of range for tiny"),
    "data.limit=0": (["data.limit=0"], "data.limit=0 must be >= 1"),
    "one prompt cannot be split": (["data.limit=1", "data.part=train"], "data.split needs at least 2 prompts"),
    "a directory as data.path": (["data.path={dir}"], "does not exist or is not a file"),
    "Latin-1 CSV": (["data.path={latin1}"], "is not valid UTF-8"),
    "one-column CSV": (["data.path={onecol}"], "missing"),
    "a duplicated column": (["data.path={dup}"], "column 'answer' appears more than once"),
    "fixed τ beyond float16": (["injection.tweak=1e308"], "injection.tweak=1e+308 is beyond any useful strength"),
    "τ axis beyond float16": (
        ["injection.tweak=choice(1e308)"],
        "injection.tweak=1e+308 is beyond any useful strength",
    ),
    "τ interval beyond float16": (
        ["injection.tweak=interval(1, 1e308)"],
        "injection.tweak=1e+308 is beyond any useful strength",
    ),
    "heartbeat overflowing a timestamp": (["heartbeat=10000000000"], "heartbeat=10000000000 is over a day"),
    "more workers than the machine holds": (["workers=1000"], "workers=1000 is more than this machine can hold"),
    "a study name with a final newline": (["study=abc\n"], "a study name is 1-100 letters"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_sweep_input_writes_nothing(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    schema = "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer"
    (tmp_path / "latin1.csv").write_bytes(f"{schema}\nCaf\xe9 a,b,c,d,e\n".encode("latin-1"))
    (tmp_path / "onecol.csv").write_text("explicit_sentence\nx\n")
    (tmp_path / "dup.csv").write_text(f"{schema},answer\na,b,c,d,e,f\n")
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "keep.txt").write_text("recorded before")
    paths = {
        "dir": str(tmp_path),
        "latin1": str(tmp_path / "latin1.csv"),
        "onecol": str(tmp_path / "onecol.csv"),
        "dup": str(tmp_path / "dup.csv"),
    }
    before = _snapshot(tmp_path)
    extra, expected = CASES[name]
    code = main(["sweep", *TINY, *(e.format(**paths) for e in extra)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("meminject: error: "), err
    assert expected in err[0], err[0]
    assert _snapshot(tmp_path) == before  # no study, no run, no file, no folder
