"""`meminject inspect` against activations read directly, and the sweep figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from meminject.cli import main
from meminject.views._inspect import project_attention_outputs

PROMPT = "The first president of the United States fought in the"


def _direct_top(bridge, tokens, name: str, position: int, head: int | None, k: int) -> list[int]:
    if head is not None:
        bridge.set_use_attn_result(True)
    try:
        _, cache = bridge.run_with_cache(tokens)
    finally:
        bridge.set_use_attn_result(False)
    activation = cache[name][0, position] if head is None else cache[name][0, position, head]
    return (activation @ bridge.W_U).topk(k).indices.tolist()


@pytest.mark.parametrize("heads, all_positions", [(False, False), (True, False), (False, True)])
def test_projection_top_tokens_equal_direct_computation(tiny, heads, all_positions):
    projection = project_attention_outputs(
        tiny, PROMPT, heads=heads, all_positions=all_positions, top_k=4, answer=" Revolutionary"
    )
    table = projection.table
    n_tokens = len(tiny.tokenize(PROMPT, bos=True))
    units = 1 + (tiny.n_heads if heads else 0)
    assert len(table) == tiny.n_layers * units * (n_tokens if all_positions else 1)
    tokens = torch.as_tensor([tiny.tokenize(PROMPT, bos=True)])
    for _, row in table.sample(min(6, len(table)), random_state=0).iterrows():
        head = None if row["head"] == "all" else int(row["head"])
        name = f"blocks.{row['layer']}.hook_attn_out" if head is None else f"blocks.{row['layer']}.attn.hook_result"
        assert [int(i) for i in row.top_ids.split()] == _direct_top(
            tiny.bridge, tokens, name, int(row.position), head, 4
        )
    assert table.answer_rank.notna().all() and (table.answer_rank >= 0).all()


def test_injection_changes_only_layers_from_the_injection_on(tiny):
    vector = tiny.W_U[:, 5] * 50.0
    before = project_attention_outputs(tiny, PROMPT, top_k=3).table
    after = project_attention_outputs(tiny, PROMPT, top_k=3, injection=(1, 1.0, vector, "all")).table
    assert (before[before.layer == 0].top_ids.values == after[after.layer == 0].top_ids.values).all()
    assert (before[before.layer >= 1].top_ids.values != after[after.layer >= 1].top_ids.values).any()


def test_inspect_command_writes_table_and_heatmap(tmp_path, capsys):
    code = main(
        [
            "inspect",
            "--prompt",
            PROMPT,
            "--answer",
            "Revolutionary",
            "--heads",
            "--inject",
            "--memory",
            "George Washington",
            "--out",
            str(tmp_path),
            "model=tiny",
            "model.device=cpu",
            "injection.layer=1",
            "tracking.enabled=false",
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "top_tokens_before" in out and "answer_rank_after" in out
    table = pd.read_csv(tmp_path / "projection.csv")
    assert {"top_tokens_before", "top_tokens_after"} <= set(table.columns)
    png = (tmp_path / "heads.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_heads_figure_is_a_readable_layers_by_heads_grid(tiny, tmp_path):
    import os

    from PIL import Image

    from meminject.views._inspect import head_grid, heatmap

    table = project_attention_outputs(tiny, PROMPT, heads=True, top_k=3, answer=" Revolutionary").table
    grid = head_grid(table)
    assert grid.values.shape == (tiny.n_layers, tiny.n_heads) and grid.per_head and grid.value_name == "answer logit"
    last = table[(table.position == table.position.max()) & (table["head"] == 0) & (table.layer == 1)].iloc[0]
    assert (
        grid.labels.loc[1, 0] == f"r{int(last.answer_rank)}\n{last.answer_logit:.1f}"
    )  # each cell: the answer's rank and logit
    folder = Path(os.environ.get("MEMINJECT_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    long_title = f"tiny: {PROMPT!r} + 'George Washington' at L1 τ=4 and a few more words to wrap"
    width, height = Image.open(heatmap(table, folder / "heads.png", long_title, answer=" Revolutionary")).size
    assert width >= 700 and height >= 500 and width / height < 3  # no single squeezed column
    without_answer = head_grid(project_attention_outputs(tiny, PROMPT, heads=False, top_k=3).table)
    assert without_answer.values.shape == (tiny.n_layers, 1) and without_answer.value_name == "top-token logit"


def test_inspect_without_a_prompt_is_one_clear_error(capsys):
    assert main(["inspect", "model=tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prompt" in err[0]


def test_sweep_figures_exist_with_their_axes(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    args = [
        "sweep",
        "model=tiny",
        "model.device=cpu",
        "data.limit=8",
        "sweep=paper_grid",
        "study=fig",
        f"storage={tmp_path / 'j'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "injection.tweak=choice(1,3)",
        "memory.encoding=choice(unembed,embed)",
        "tracking.trial_figures=true",
    ]
    assert main(args) == 0
    folder = tmp_path / "outputs" / "figures" / "fig"
    heat = Image.open(folder / "gain_heatmap.png")
    assert heat.size[0] > heat.size[1]  # two panels side by side (unembed, embed); contents: test_figures.py
    assert (folder / "optimization_history.png").stat().st_size > 5000 and (folder / "trials_scatter.png").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("meminject/sweep/fig").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("meminject.role") == "sweep")
    assert {"figures/gain_heatmap.png", "figures/optimization_history.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "figures")
    }
    trial = next(r for r in runs if r.data.tags.get("meminject.role") == "trial")
    assert "per_prompt_gains.png" in {a.path for a in client.list_artifacts(trial.info.run_id)}


def test_inspect_prints_the_best_rows_in_columns_that_raw_tokens_cannot_break(tmp_path, capsys):
    """A newline and a tab in the prompt are tokens of their own: shown escaped, every line of
    the table the same width; 15 rows by default, best answer rank first; --rows 0 prints all."""
    prompt = "The first president\nof the\tUnited States fought in the"
    args = ["inspect", "--prompt", prompt, "--answer", "Revolutionary", "--heads", "--all-positions"]
    args += ["--out", str(tmp_path), "model=tiny", "model.device=cpu", "tracking.enabled=false"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    table = pd.read_csv(tmp_path / "projection.csv", keep_default_na=False)
    header = next(i for i, line in enumerate(out) if line.lstrip().startswith("layer"))
    rows = out[header + 1 : header + 1 + 15]
    assert out[header + 16] == f"(15 of {len(table)} rows, best by the answer's rank first; --rows 0 prints all)"
    assert len({len(line) for line in [out[header], *rows]}) == 1, "\n".join(out[header : header + 16])
    assert any("'\\n'" in line for line in out) or any("'\\t'" in line for line in out)
    ranks = [int(line.split()[-2]) for line in rows]  # the last two columns: answer_rank, answer_logit
    assert ranks[0] == table["answer_rank"].min() and ranks == sorted(ranks)

    assert main([*args, "--rows", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("(") and "rows, best" in line for line in out)
    assert len(out) == 1 + 1 + len(table) + 1  # title, header, every row, the files line
