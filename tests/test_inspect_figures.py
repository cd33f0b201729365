"""`meminject inspect` against activations read directly, and the sweep figures."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from meminject.cli import main
from meminject.inspect_heads import project_attention_outputs

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
    projection = project_attention_outputs(tiny, PROMPT, heads=heads, all_positions=all_positions, top_k=4, answer=" Revolutionary")
    table = projection.table
    n_tokens = len(tiny.tokenize(PROMPT, bos=True))
    units = 1 + (tiny.n_heads if heads else 0)
    assert len(table) == tiny.n_layers * units * (n_tokens if all_positions else 1)
    tokens = torch.as_tensor([tiny.tokenize(PROMPT, bos=True)])
    for _, row in table.sample(min(6, len(table)), random_state=0).iterrows():
        head = None if row["head"] == "all" else int(row["head"])
        name = f"blocks.{row['layer']}.hook_attn_out" if head is None else f"blocks.{row['layer']}.attn.hook_result"
        assert [int(i) for i in row.top_ids.split()] == _direct_top(tiny.bridge, tokens, name, int(row.position), head, 4)
    assert table.answer_rank.notna().all() and (table.answer_rank >= 0).all()


def test_injection_changes_only_layers_from_the_injection_on(tiny):
    vector = tiny.W_U[:, 5] * 50.0
    before = project_attention_outputs(tiny, PROMPT, top_k=3).table
    after = project_attention_outputs(tiny, PROMPT, top_k=3, injection=(1, 1.0, vector, "all")).table
    assert (before[before.layer == 0].top_ids.values == after[after.layer == 0].top_ids.values).all()
    assert (before[before.layer >= 1].top_ids.values != after[after.layer >= 1].top_ids.values).any()


def test_inspect_command_writes_table_and_heatmap(tmp_path, capsys):
    code = main(["inspect", "--prompt", PROMPT, "--answer", "Revolutionary", "--heads", "--inject", "--memory", "George Washington",
                 "--out", str(tmp_path), "model=tiny", "model.device=cpu", "injection.layer=1", "tracking.enabled=false"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "top_tokens_before" in out and "answer_rank_after" in out
    table = pd.read_csv(tmp_path / "projection.csv")
    assert {"top_tokens_before", "top_tokens_after"} <= set(table.columns)
    png = (tmp_path / "heads.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_inspect_without_a_prompt_is_one_clear_error(capsys):
    assert main(["inspect", "model=tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prompt" in err[0]


def test_sweep_figures_exist_with_their_axes(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    args = ["sweep", "model=tiny", "model.device=cpu", "data.limit=8", "sweep=paper_grid", "study=fig", f"storage={tmp_path / 'j'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "injection.tweak=choice(1,3)", "memory.encoding=choice(unembed,embed)"]
    assert main(args) == 0
    folder = tmp_path / "outputs" / "figures" / "fig"
    heat = Image.open(folder / "gain_heatmap.png")
    assert heat.size[0] >= 2 * heat.size[1] - 4  # two square-ish panels side by side (unembed, embed)
    assert (folder / "optimization_history.png").stat().st_size > 5000
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("meminject").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("meminject.role") == "sweep")
    assert {"figures/gain_heatmap.png", "figures/optimization_history.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    trial = next(r for r in runs if r.data.tags.get("meminject.role") == "trial")
    assert "per_prompt_gains.png" in {a.path for a in client.list_artifacts(trial.info.run_id)}
