"""Every bad input, through the CLI, in one table: one line naming the problem, a non-zero
exit, nothing half-written, and nothing already recorded lost. Plus property-based tests
(hypothesis) of the search-space parser and the dataset loader."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import meminject_experiments, without_stages
from meminject.cli import main
from meminject.core._errors import MemInjectError
from meminject.store._storage import open_storage

GOOD_HEADER = "explicit_sentence,obscure_sentence,explicit_entity,obscure_entity,answer\n"
GOOD_ROW = (
    "Paris is the capital of,The city of the Eiffel Tower is the capital of,Paris,The city of the Eiffel Tower,France\n"
)
TINY = ["model=tiny", "model.device=cpu", "data.limit=4"]

# name: (bytes of a data file or None, command line with {csv}/{ws} placeholders, expected words in the one error line)
CSV_CASES = {
    "empty file": (b"", "eval", "empty"),
    "header only": (GOOD_HEADER.encode(), "eval", "header only"),
    "wrong delimiter": ((GOOD_HEADER + GOOD_ROW).replace(",", ";").encode(), "eval", "delimiter"),
    "missing column": (
        (GOOD_HEADER.replace(",answer", "") + GOOD_ROW.rsplit(",", 1)[0] + "\n").encode(),
        "eval",
        "missing column(s) answer",
    ),
    "empty answer": ((GOOD_HEADER + GOOD_ROW.rsplit(",", 1)[0] + ",\n").encode(), "eval", "line 2, column answer"),
    "NaN field": (
        (GOOD_HEADER + GOOD_ROW + GOOD_ROW.replace("Paris,", "NaN,", 1).replace("Paris is", "X is")).encode(),
        "eval",
        "line 3, column explicit_entity",
    ),
    "empty field after a field with a newline": (
        (GOOD_HEADER + '"Paris is the\ncapital of",x,Paris,y,France\n' + GOOD_ROW.rsplit(",", 1)[0] + ",\n").encode(),
        "eval",
        "line 4, column answer",
    ),
    "malformed quotes": ((GOOD_HEADER + '"Paris is the capital of,x,y,z,France\n').encode(), "eval", "malformed"),
    "non-UTF-8 bytes": (
        GOOD_HEADER.encode() + b"Caf\xe9 is,The place is,Caf\xe9,The place,France\n",
        "eval",
        "not valid UTF-8",
    ),
    "prompt longer than the context": (
        (GOOD_HEADER + "word " * 400 + ",obscure is,Paris,The city,France\n").encode(),
        "eval",
        "more than tiny's context",
    ),
    "memory longer than the context": (
        (GOOD_HEADER + "Paris is,The city is," + "word " * 300 + ",The city,France\n").encode(),
        "eval memory.encoding=layer",
        "the memory text has",
    ),
    "memory that tokenizes to nothing": (
        (GOOD_HEADER + "Paris is,The city is,   ,The city,France\n").encode(),
        "eval",
        "column explicit_entity",
    ),
    "word list with a missing column": (
        b"Top 5000 Words,Nouns,Verbs,Adjectives,Adverbs\nthe,time,be,new,so\n",
        "eval memory.type=pos memory.word_list={csv}",
        "missing column(s) Conjunctions",
    ),
}
ARG_CASES = {
    "unknown model": ("eval model=not-a-model", "unknown model option"),
    "layer out of range": ("eval injection.layer=7", "injection.layer=7 is out of range"),
    "head out of range": ("eval injection.site=head injection.head=9", "injection.head=9 is out of range"),
    "negative tweak": ("eval injection.tweak=-1", "injection.tweak=-1.0 must be"),
    "NaN tweak": ("eval injection.tweak=nan", "injection.tweak=nan must be"),
    "unknown config key": ("eval injection.deep=3", "unknown config key 'injection.deep'"),
    "unknown key added with +": (
        "eval +injection.tweek=9",
        "unknown config key 'injection.tweek' (did you mean injection.tweak?)",
    ),
    "misspelt key": ("eval injection.layr=1", "(did you mean injection.layer?)"),
    "bad value of an enumerated key": (
        "eval perf.padding_side=middle",
        "perf.padding_side='middle' is not one of right, left",
    ),
    "searched axis added with +": (
        "sweep sweep=tpe +injection.tweek=interval(1,5)",
        "unknown config key 'injection.tweek'",
    ),
    "study name that is a path": ("sweep sweep=tpe study=../../escape", "study='../../escape': a study name is"),
    "absolute study name": ("sweep sweep=tpe study=/tmp/pwn", "study='/tmp/pwn': a study name is"),
    "unknown setting of best": ("best topp=3", "unknown setting 'topp' for best (did you mean top?)"),
    "bad override syntax": ("eval injection.layer==3]", "bad override"),
    "missing data file": ("eval data.path=/nonexistent/x.csv", "does not exist"),
    "non-integer layer": ("eval injection.layer=abc", "injection.layer='abc' must be an integer"),
    "unknown encoding": ("eval memory.encoding=onehot", "memory.encoding='onehot'"),
    "unknown word source": ("eval memory.type=pos memory.words=wordnet", "memory.words='wordnet'"),
    "malformed search expression": ("sweep sweep=tpe injection.tweak=interval(1,", "injection.tweak"),
    "inverted interval": ("sweep sweep=tpe injection.tweak=interval(5, 1)", "inverted interval"),
    "search range past the model": ("sweep sweep=tpe injection.layer=range(0, 9)", "layer 3 is out of range"),
    "continuous axis on a grid": (
        "sweep sweep=paper_grid injection.tweak=interval(1, 5)",
        "grid sampler needs discrete axes",
    ),
    "unknown sweep": ("sweep sweep=nope", "unknown sweep 'nope'"),
    "unknown sampler": ("sweep sweep=tpe sampler=cmaes", "sampler='cmaes'"),
    "zero trial budget": ("sweep sweep=tpe n_trials=0", "n_trials"),
    "grace not longer than the heartbeat": ("sweep sweep=tpe heartbeat=5 grace=5", "grace=5 must be longer"),
    "unreachable storage URL": (
        "sweep sweep=tpe storage=postgresql+psycopg2://meminject:hunter2@127.0.0.1:1/optuna",
        "cannot open study storage postgresql+psycopg2://meminject:***@127.0.0.1:1",
    ),
    "storage URL with an empty user": (
        "sweep sweep=tpe storage=postgresql+psycopg2://:hunter2@127.0.0.1:1/optuna",
        "cannot open study storage postgresql+psycopg2://:***@127.0.0.1:1/optuna",
    ),
    "storage URL with a password parameter": (
        "sweep sweep=tpe storage=postgresql+psycopg2://meminject@127.0.0.1:1/optuna?password=hunter2",
        "optuna?password=***",
    ),
    "unreachable tracking server": (
        "sweep sweep=tpe tracking.uri=http://meminject:hunter2@127.0.0.1:1",
        "tracking server http://meminject:***@127.0.0.1:1 is unreachable",
    ),
    "study exists with a different search space": (
        "sweep sweep=tpe study=kept n_trials=2 injection.tweak=interval(1, 3)",
        "exists with a different search space",
    ),
    "unknown worker setting": ("worker study=kept colour=red", "unknown setting 'colour' for worker"),
    "worker for a missing study": ("worker study=nope", "no study 'nope'"),
    "best of a missing study": ("best study=nope", "no study 'nope'"),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with a finished study and MLflow runs: bad input must leave them as they are."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "ws").mkdir()
    args = ["sweep", *TINY, "sweep=tpe", "study=kept", "n_trials=2", *_stores(folder)]
    import os

    cwd = os.getcwd()
    os.chdir(folder / "ws")
    try:
        assert main(args) == 0
    finally:
        os.chdir(cwd)
    return folder


def _stores(folder: Path) -> list[str]:
    return [f"storage={folder / 'optuna.journal'}", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}"]


def _recorded(folder: Path) -> tuple:
    from mlflow.tracking import MlflowClient

    study = optuna.load_study(study_name="kept", storage=open_storage(str(folder / "optuna.journal")))
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs(meminject_experiments(client, "kept"))
    return (
        [(t.number, t.state, t.value, t.params) for t in study.trials],
        sorted((r.info.run_id, r.info.status, tuple(sorted(r.data.metrics.items()))) for r in runs),
    )


CASES = {
    **{k: (v[0], v[1], v[2]) for k, v in CSV_CASES.items()},
    **{k: (None, v[0], v[1]) for k, v in ARG_CASES.items()},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_a_nonzero_exit_and_loses_nothing(case, workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    content, command, expected = CASES[case]
    words = command.split(" ") if "interval(" not in command and "range(" not in command else _split_keep_calls(command)
    name, extra = words[0], words[1:]
    data = []
    if content is not None:
        path = tmp_path / "input.csv"
        path.write_bytes(content)
        extra = [w.replace("{csv}", str(path)) for w in extra]
        data = [] if any("{csv}" in w for w in words) else [f"data.path={path}"]
    before = _recorded(workspace)
    out = tmp_path / "out"
    if name == "eval":
        args = ["eval", *TINY, "injection.layer=1", *_stores(workspace)[1:], f"output_dir={out}", *data, *extra]
    elif name == "sweep":
        stores = [s for s in _stores(workspace) if not any(s.split("=")[0] == e.split("=")[0] for e in extra)]
        args = ["sweep", *TINY, *stores, *extra]
    else:  # worker, best: the study storage only
        args = [name, *extra, _stores(workspace)[0]]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    # one error line; before it at most the stage lines of the steps that ran ("clean pass: … …")
    err = without_stages(err)
    assert len(err) == 1 and err[0].startswith("meminject: error: "), err
    assert expected in err[0], err[0]
    assert "hunter2" not in err[0]
    assert not out.exists() and not list(tmp_path.glob("out*"))  # nothing half-written
    assert _recorded(workspace) == before  # nothing recorded is lost or changed


def _split_keep_calls(command: str) -> list[str]:
    """Split on spaces outside parentheses ("interval(5, 1)" stays one word)."""
    words, depth, current = [], 0, ""
    for char in command:
        depth += char == "("
        depth -= char == ")"
        if char == " " and depth == 0:
            words.append(current)
            current = ""
        else:
            current += char
    return [*words, current]


# --------------------------------------------------------------------------- properties

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(lo=finite, hi=finite)
def test_interval_keeps_its_bounds_or_refuses_inverted(lo, hi):
    from meminject.search._space import parse_space

    expression = f"interval({lo!r}, {hi!r})"
    if lo <= hi:  # low == high is a one-value interval, as in Optuna
        dist = parse_space({"injection.tweak": expression}, {"n_layers": 4, "n_heads": 2}).distributions[
            "injection.tweak"
        ]
        assert (dist.low, dist.high) == (lo, hi)
    else:
        with pytest.raises(MemInjectError):
            parse_space({"injection.tweak": expression}, {"n_layers": 4, "n_heads": 2})


@settings(max_examples=150, deadline=None)
@given(start=st.integers(0, 40), stop=st.integers(0, 40), step=st.integers(1, 5))
def test_range_means_python_range_in_every_sampler_or_is_refused(start, stop, step):
    from meminject.search._space import parse_space

    expected = list(range(start, stop, step))
    try:
        space = parse_space({"injection.layer": f"range({start}, {stop}, {step})"}, {"n_layers": 30, "n_heads": 9})
    except MemInjectError:
        assert not expected or max(expected) >= 30  # empty, or past the model's last layer
        return
    assert expected and max(expected) < 30
    assert [point["injection.layer"] for point in space.grid()] == expected
    distribution = space.distributions["injection.layer"]  # what TPE and random sample from
    sampled = list(
        getattr(distribution, "choices", None) or range(distribution.low, distribution.high + 1, distribution.step)
    )
    assert sampled == expected


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.sampled_from(["unembed", "embed", "layer"]), min_size=1, max_size=3, unique=True))
def test_choice_keeps_its_values_in_order(values):
    from meminject.search._space import parse_space

    space = parse_space({"memory.encoding": f"choice({', '.join(values)})"}, {"n_layers": 4, "n_heads": 2})
    assert list(space.distributions["memory.encoding"].choices) == values


# Cells with commas, quotes and line breaks (the CSV writer quotes them), blanks, and NA words.
cell = st.one_of(
    st.text(
        alphabet=st.characters(categories=("L", "N", "P", "Zs"), include_characters=',"\n'), min_size=0, max_size=12
    ),
    st.sampled_from(["", " ", "NaN", "NA", "null", "None", "n/a", "x"]),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(cell, cell, cell, cell, cell), min_size=0, max_size=5))
def test_dataset_loader_loads_valid_rows_exactly_or_refuses_in_one_message(rows, tmp_path):
    import csv
    import io
    import uuid
    import warnings

    from pandas._libs.parsers import STR_NA_VALUES

    from meminject.config import load_run_config as compose_config
    from meminject.data._dataset import load_dataset

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["explicit_sentence", "obscure_sentence", "explicit_entity", "obscure_entity", "answer"])
    writer.writerows(rows)
    path = tmp_path / f"prop-{uuid.uuid4().hex}.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    cfg = compose_config(["model=tiny", f"data.path={path}"]).data
    valid = bool(rows) and all(value.strip() and value not in STR_NA_VALUES for row in rows for value in row)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate rows are kept with a warning
            dataset = load_dataset(cfg)
    except MemInjectError as exc:
        assert not valid, f"valid rows refused: {exc}"
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert valid, "invalid rows accepted"
    columns = ["explicit_sentence", "obscure_sentence", "explicit_entity", "obscure_entity", "answer"]
    loaded = [list(r) for r in dataset.frame[columns].itertuples(index=False)]
    # the paper's convention: answers start with a space (" War" is the token after "the")
    assert loaded == [[*row[:4], row[4] if row[4].startswith(" ") else " " + row[4]] for row in rows]
