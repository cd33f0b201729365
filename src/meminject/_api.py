"""The Python face of meminject: what the commands do, for a notebook or a script.

A :class:`Session` loads a model and a dataset once and evaluates any injection point (or
many) into pandas DataFrames against one clean pass, which the engine's
:class:`~meminject.engine.Evaluator` computes on the first point and keeps; :func:`run_sweep` runs
or resumes a study exactly as ``meminject sweep`` does, :func:`best` returns ``meminject
best``'s tables and verdicts, and :func:`figures` draws a study's figures. Keys are the
commands' own ``key=value`` strings; nothing here is a second engine.

Every example runs on the built-in ``tiny`` model (a test executes them)::

    >>> import meminject
    >>> lab = meminject.Session("model=tiny", "data.limit=4")
    >>> base = lab.baseline()
    >>> base[["answer", "answer_prob_before", "answer_prob_explicit"]].shape
    (4, 3)
    >>> table = lab.evaluate(layer=1, tweak=4)
    >>> len(table), sorted(table.attrs["summary"])[:2]
    (4, ['frac_improved', 'mean_damage'])

A study, then its best sites and figures (``best`` and ``figures`` below continue this one)::

    >>> study = meminject.run_sweep("sweep=smoke", "model=tiny", "data.limit=8", "n_trials=3", "study=doc", "progress=false")
    ... # doctest: +ELLIPSIS
    sweep smoke: study doc ...
    >>> len(study.trials)
    3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .core._errors import ConfigError

if TYPE_CHECKING:
    import optuna
    import pandas as pd

__all__ = ["Session", "Best", "run_sweep", "best", "figures", "export", "ALIASES"]

# Short names for the point keys a person types most; any injection.* or memory.* key works too.
ALIASES = {
    "layer": "injection.layer",
    "depth": "injection.depth",
    "tweak": "injection.tweak",
    "site": "injection.site",
    "head": "injection.head",
    "positions": "injection.positions",
    "encoding": "memory.encoding",
    "memory_type": "memory.type",
}


def _point_keys(point: Mapping[str, Any] | None, keys: Mapping[str, Any]) -> dict[str, Any]:
    """One point's ``section.leaf`` values from a mapping and keyword arguments (aliases allowed)."""
    merged = {**(point or {}), **keys}
    values = {ALIASES.get(k, k): v for k, v in merged.items()}
    for key in values:
        if not key.startswith(("injection.", "memory.")):
            raise ConfigError(
                f"{key}: a point sets injection.* and memory.* keys (or {', '.join(ALIASES)}); "
                "the model, data and perf keys are the session's: start another Session"
            )
    return values


class Session:
    """A model and a dataset loaded once (``overrides``: ``meminject eval``'s keys); every
    point evaluated against the same clean pass, so a second point costs only its injected pass.

    >>> lab = Session("model=tiny", "data.limit=4")
    >>> lab.model.name, len(lab.dataset)
    ('tiny', 4)
    >>> grid = lab.evaluate_many([{"layer": 0, "tweak": t} for t in (1, 4)])
    >>> grid[["injection.layer", "injection.tweak"]].values.tolist()
    [[0, 1], [0, 4]]
    >>> lab.evaluate(layer=9)
    Traceback (most recent call last):
    ...
    meminject.core._errors.ConfigError: injection.layer=9 is out of range for tiny (layers 0..2)
    """

    def __init__(self, *overrides: str) -> None:
        from .config import load_run_config
        from .runner._trial import TrialRunner

        self.config = load_run_config(list(overrides))
        self._runner = TrialRunner()  # the sweep workers' cache: one evaluator per (model, data, perf, metric)
        self.evaluator = self._runner.evaluator(self.config)

    @property
    def model(self):
        """The loaded model (:class:`meminject.engine.LoadedModel`)."""
        return self.evaluator.model

    @property
    def dataset(self):
        """The loaded prompts (:class:`meminject.data.Dataset`; ``.frame`` is a DataFrame)."""
        return self.evaluator.dataset

    def baseline(self) -> pd.DataFrame:
        """One row per prompt: P(answer) on the obscure prompt (before any injection) and on the
        explicit one, with the answer's rank; the clean pass, computed once per session."""
        import pandas as pd

        clean = self.evaluator.clean
        frame = self.dataset.frame
        return pd.DataFrame(
            {
                "row": self.evaluator.rows,
                "obscure_sentence": frame["obscure_sentence"].tolist(),
                "explicit_sentence": frame["explicit_sentence"].tolist(),
                "answer": frame["answer"].tolist(),
                "answer_prob_before": clean["before"],
                "answer_prob_explicit": clean["explicit"],
                "rank_before": clean["rank_before"],
            }
        )

    def _configs(self, points: Iterable[Mapping[str, Any]]) -> list[Any]:
        from .config import with_values
        from .engine import resolve_depth

        return [
            resolve_depth(with_values(self.config, _point_keys(p, {}))) for p in points
        ]  # a depth: this model's layer

    def evaluate(self, point: Mapping[str, Any] | None = None, **keys: Any) -> pd.DataFrame:
        """One injection point (``{"injection.layer": 1}``, or ``layer=1, tweak=4``; unset keys
        keep the session's config) as the per-prompt table of ``meminject eval``; its summary
        (mean gain, fraction improved, ...) is in ``.attrs["summary"]``."""
        (cfg,) = self._configs([_point_keys(point, keys)])
        _, _, result = self._runner.run(cfg)
        table = result.per_prompt.copy()
        table.attrs["summary"] = dict(result.summary)
        return table

    def evaluate_many(self, points: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
        """Several points (mappings as for :meth:`evaluate`), same-layer ones stacked in one
        pass where the engine does; one row per point: its keys, then its summary."""
        import pandas as pd

        points = [_point_keys(p, {}) for p in points]
        rows = []
        for point, (_, _, result) in zip(points, self._runner.run_many(self._configs(points))):
            rows.append({**point, **result.summary})
        return pd.DataFrame(rows)

    def heads(
        self,
        prompt: str | None = None,
        *,
        row: int | None = None,
        answer: str | None = None,
        heads: bool = True,
        top: int = 5,
        figure: str | Path | None = None,
    ) -> pd.DataFrame:
        """The head projector (``meminject inspect --heads``): every layer's and head's attention
        output at the prompt's last position through W_U, with the top tokens and the answer's
        rank and logit; ``row``: a dataset row's obscure prompt and answer; ``figure``: also draw
        the layers × heads heatmap into that PNG.

        >>> lab = Session("model=tiny", "data.limit=4")
        >>> table = lab.heads(row=int(lab.dataset.frame.row.iloc[0]), top=3)
        >>> len(table) == lab.model.n_layers * (lab.model.n_heads + 1), "answer_rank" in table
        (True, True)
        """
        from .views._inspect import heatmap, project_attention_outputs

        if row is not None:
            frame = self.dataset.frame
            match = frame[frame.row == row]
            if match.empty:
                raise ConfigError(f"row={row} is not in {self.dataset.name} (rows {', '.join(map(str, frame.row))})")
            prompt = prompt or match.iloc[0].obscure_sentence
            answer = answer if answer is not None else match.iloc[0].answer
        if not prompt:
            raise ConfigError("heads() needs a prompt or row=N")
        if answer is not None and not answer.startswith(" "):
            answer = " " + answer  # the paper's answers follow a space
        table = project_attention_outputs(self.model, prompt, heads=heads, top_k=top, answer=answer).table
        if figure is not None:
            heatmap(table, Path(figure), f"{self.model.name}: {prompt!r}", answer=answer)
        return table


@dataclass
class Best:
    """``meminject best``'s results: the ranked table and, with a held-out part, its report."""

    sites: pd.DataFrame
    heldout: pd.DataFrame | None = None

    @property
    def verdicts(self) -> dict[int, str]:
        """rank → verdict of each site judged on the held-out prompts (empty without a report)."""
        if self.heldout is None or self.heldout.empty:
            return {}
        return {int(r): str(v) for r, v in zip(self.heldout["rank"], self.heldout["verdict"])}


def run_sweep(*args: str) -> optuna.Study:
    """Run or resume a study with ``meminject sweep``'s keys (printed as the command prints);
    returns the Optuna study. Rerunning with the same ``study=`` resumes it.

    >>> study = run_sweep("sweep=smoke", "model=tiny", "data.limit=8", "n_trials=3", "study=doc", "progress=false")
    ... # doctest: +ELLIPSIS
    sweep smoke: study doc ...
    >>> len(study.trials)  # complete already: nothing new ran
    3
    """
    from .cli._sweep import cmd_sweep
    from .store._storage import load_study
    from .search._settings import load_sweep

    spec, settings = load_sweep(list(args))
    cmd_sweep(list(args))
    return load_study(spec.study_name, settings.get("storage"))


def _study_args(study: optuna.Study | str, args: tuple[str, ...]) -> list[str]:
    name = study if isinstance(study, str) else study.study_name
    return [f"study={name}", *args]


def best(study: optuna.Study | str, *args: str) -> Best:
    """``meminject best`` on a study (or its name) with that command's keys (``top=``,
    ``heldout=``, ``controls=``, ``storage=`` ...): ranked sites, and on a train part the top
    sites judged on held-out prompts with one verdict each.

    >>> result = best("doc", "top=2", "controls=pos", "bootstrap=200")  # doctest: +ELLIPSIS
    study doc: 3 complete trials, ...
    >>> len(result.sites) >= 1, sorted(set(result.verdicts)) == list(result.heldout["rank"])
    (True, True)
    """
    from .cli._best import run_best

    sites, heldout = run_best(_study_args(study, args))
    return Best(sites, heldout)


def export(study: optuna.Study | str, *args: str):
    """``meminject export`` of one site of a study (``rank=N`` or ``site=LABEL``, ``out=DIR``,
    ``storage=``); returns it loaded, as a :class:`meminject.Injection`::

        injection = export(study, "rank=1", "out=best-site")
        with injection.applied(model, tokenizer, memory="George Washington"):
            model.generate(...)
    """
    from .engine._exported import Injection
    from .cli._export import EXPORT_SETTINGS
    from .selection._export import export_site
    from .selection._results import distinct_sites, ranked_sites
    from .search._keys import parse_settings
    from .store._storage import load_study

    settings, _ = parse_settings(_study_args(study, args), EXPORT_SETTINGS, "export")
    if isinstance(study, str):
        study = load_study(study, settings.get("storage"))
    folder, _ = export_site(study, distinct_sites(ranked_sites(study)), settings)
    return Injection.load(folder)


def figures(study: optuna.Study | str, folder: str | Path | None = None, storage: str | None = None) -> list[Path]:
    """The study's figures (layer × τ heatmap, trial scatter, Optuna's history and importances)
    into ``folder`` (default ``outputs/figures/<study>``); returns the PNGs made.

    >>> made = [p.name for p in figures("doc")]
    >>> " ".join(made[:2])
    'gain_heatmap.png trials_scatter.png'
    """
    from .store._storage import load_study
    from .selection._final import study_figures

    if isinstance(study, str):
        study = load_study(study, storage)
    return study_figures(study, folder=None if folder is None else Path(folder))
