"""``meminject ui``: which experiment it opens (each study has its own; no server started here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from meminject.core._errors import ConfigError
from meminject.cli._ui import VIEW_COLUMNS, _chosen

CFG = SimpleNamespace(tracking=SimpleNamespace(experiment="meminject"))


class _Store:
    def __init__(self, *names: str):
        self.experiments = [
            SimpleNamespace(name=n, experiment_id=str(i), creation_time=1000 + i) for i, n in enumerate(names)
        ]

    def search_experiments(self):
        return list(self.experiments)


STORE = _Store("Default", "meminject/sweep/first", "meminject/eval", "meminject/sweep/second")


def test_study_opens_that_study_alone():
    experiment, what = _chosen(STORE, CFG, {"study": "first"})
    assert experiment.name == "meminject/sweep/first" and what == "study first"


def test_without_a_study_the_newest_opens_and_the_others_are_named():
    experiment, what = _chosen(STORE, CFG, {})
    assert experiment.name == "meminject/sweep/second"
    assert what == "study second (other studies: first; pass study=NAME)"


def test_eval_runs_have_their_own_experiment_and_a_store_without_studies_opens_it():
    assert _chosen(STORE, CFG, {"experiment": "meminject/eval"})[0].name == "meminject/eval"
    assert _chosen(_Store("meminject/eval"), CFG, {})[0].name == "meminject/eval"


def test_an_unknown_study_names_the_studies_there_are():
    with pytest.raises(ConfigError, match=r"study='third' has no runs in this store \(studies: second, first\)"):
        _chosen(STORE, CFG, {"study": "third"})


def test_the_saved_view_shows_dataset_model_and_prompt_count():
    assert {"params.`dataset`", "params.`model`", "metrics.`n_prompts`"} <= set(VIEW_COLUMNS)
