"""``meminject export``: one ranked site of a study as ``injection.json`` (or, with no site
named, the list of exportable sites)."""

from __future__ import annotations

from typing import Sequence

from ..core._errors import ConfigError
from ..engine._injection_file import FILE_NAME
from ..search._keys import parse_settings
from ..selection._export import export_site
from ..selection._results import distinct_sites, ranked_sites
from ..store._storage import load_study
from ..tracking._schema import site_label
from ..views._tables import format_table

__all__ = ["cmd_export", "EXPORT_SETTINGS"]

EXPORT_SETTINGS = {
    "study": "the study (default: the only study in the storage)",
    "storage": "its Optuna storage (default $MEMINJECT_STORAGE, else ./mlruns/optuna.journal)",
    "rank": "the site's rank in meminject best's table (best τ of each site; default 1)",
    "site": "or the site by its label, as best and the MLflow run names show it (e.g. 'L1 τ4 unembed correct')",
    "out": "the export folder (default outputs/export/<study>-rank<N>)",
}


def cmd_export(args: Sequence[str]) -> int:
    settings, _ = parse_settings(args, EXPORT_SETTINGS, "export")
    study = load_study(settings.get("study"), settings.get("storage"))
    table = distinct_sites(ranked_sites(study))
    if table.empty:
        raise ConfigError(f"study {study.study_name!r} has no complete trials to export yet")
    if not {"rank", "site", "study"} & set(settings):
        labels = [site_label(row) for row in table.to_dict("records")]
        print(
            f"study {study.study_name}: {len(table)} sites can be exported (meminject export study={study.study_name} rank=N):"
        )
        print(format_table(table.head(20)))
        for rank, label in list(zip(table["rank"], labels))[:20]:
            print(f"  rank {rank}: site={label!r}")
        return 0
    folder, record = export_site(study, table, settings)
    print(
        f"exported {record.label} (study {record.study['name']}, rank {record.study['rank']}, trial {record.study['trial']})"
    )
    g = record.gains
    line = f"  train gain {g['train_gain']:+.4f} [{g['train_ci_low']:+.4f}, {g['train_ci_high']:+.4f}]"
    if g.get("heldout_gain") is not None:
        line += f"   held-out {g['heldout_gain']:+.4f} [{g['heldout_ci_low']:+.4f}, {g['heldout_ci_high']:+.4f}]   verdict: {record.verdict}"
    print(line)
    print(f"  {folder / FILE_NAME}")
    for note in record.notes:
        print(f"  note: {note}")
    return 0
