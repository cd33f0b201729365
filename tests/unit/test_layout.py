"""The shape of the code: no import cycles, files of one idea (about 400 lines at most), Optuna's
private API in one adapter, the coordinator without model weights, help that lists the keys."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT
from meminject.cli import main

SRC = ROOT / "src" / "meminject"


# The layers, bottom first: each package may import itself and the packages listed for it.
# A sweep's work is split by concern: where a study lives (store), what it tries (search),
# running trials (runner), picking sites honestly (selection); what people see (views) knows
# nothing of studies' storage or workers; the commands (cli) and the Python face sit on top.
_BELOW_STORE = {"core", "config", "data", "tracking", "engine"}
LAYERS = {
    "core": set(),
    "config": {"core"},
    "data": {"core", "config"},
    "tracking": {"core", "config"},
    "engine": {"core", "config", "data"},
    "views": _BELOW_STORE,
    "store": {"core", "tracking"},
    "search": _BELOW_STORE | {"store"},
    "runner": _BELOW_STORE | {"store", "search", "views"},
    "selection": _BELOW_STORE | {"store", "search", "runner", "views"},
    "cli": _BELOW_STORE | {"store", "search", "runner", "selection", "views"},
    # The Python face (meminject/_api.py, re-exported by meminject/__init__): on top, with cli.
    "_api": _BELOW_STORE | {"store", "search", "runner", "selection", "views", "cli"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """meminject modules a file imports: at module level, or anywhere (a lazy import inside a
    function is a dependency too, only a later one)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in tree.body if module_level_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("meminject"):
                if node.module:  # `from . import x` imports x, not its package's other names
                    found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("meminject"))
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root (meminject/__init__)


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    """Import edges between meminject modules, with the package ``__init__`` edges Python adds:
    importing ``meminject.engine._models`` from outside ``engine`` runs ``meminject.engine``."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        own = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = {m for m in _imports(path, module_level_only) if m in modules and m != name}
        for target in list(targets):
            parent = target.rpartition(".")[0]
            while parent.count(".") >= 1 and parent != own and not own.startswith(parent + "."):
                targets.add(parent)  # a package entered from outside runs its __init__
                parent = parent.rpartition(".")[0]
        graph[name] = targets - {name}
    return graph


def test_imports_go_one_way_down_the_layers():
    """config → data → engine; config → tracking; then store → search → runner → selection,
    views beside them (under runner), cli and the Python face (_api) on top; core under all.
    Lazy (function-level) imports count."""
    wrong = []
    for name, targets in _graph(module_level_only=False).items():
        layer = _layer(name)
        if layer in (None, "__main__", "resources"):  # the root re-exports; resources is data
            continue
        allowed = LAYERS[layer] | {layer}
        wrong += [f"{name} -> {t}" for t in sorted(targets) if _layer(t) not in allowed]
    assert not wrong, "imports against the layers: " + "; ".join(wrong)


def test_the_python_face_sits_on_top():
    """No layer imports the Python face; the package root re-exports it."""
    users = sorted(n for n, targets in _graph(module_level_only=False).items() if "meminject._api" in targets)
    assert users == ["meminject"], users


def test_every_layer_is_a_package_with_a_public_face():
    for layer in LAYERS:
        if layer == "_api":
            continue
        init = SRC / layer / "__init__.py"
        assert init.is_file(), layer
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{layer}/__init__.py has no docstring"
        assert any(
            isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets) for n in tree.body
        ), f"{layer}/__init__.py has no __all__"
        private = [p.name for p in (SRC / layer).glob("*.py") if p.name != "__init__.py" and not p.name.startswith("_")]
        assert not private, f"{layer}: modules behind the public face are private (_name.py): {private}"


def test_no_import_cycles_in_src():
    """Module-level imports (what runs on import), package ``__init__`` edges included."""
    graph = _graph(module_level_only=True)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_every_package_is_a_layer_and_none_holds_more_than_a_quarter_of_the_code():
    """Each folder under src/meminject is a layer the import test knows, and no layer grows past
    about a quarter of the source lines (the sweep package once held 45%)."""
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert packages - {"resources"} == set(LAYERS) - {"_api"}, packages  # resources holds data, no code
    lines = {p: len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    total = sum(lines.values())
    share = {pkg: sum(n for p, n in lines.items() if p.parent.name == pkg) / total for pkg in packages}
    assert max(share.values()) <= 0.25, {k: round(v, 3) for k, v in sorted(share.items())}


def test_every_source_file_holds_one_idea_of_at_most_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_optunas_private_api_is_used_in_the_adapter_only():
    private = re.compile(
        r"optuna\.[a-z_.]*\._[a-z]|\._suggest\(|\._pop_waiting_trial_id|\._storage\b|\._trial_id\b|\._study_id\b"
    )

    def code(path: Path) -> str:  # our own modules named _storage etc. are imported, not Optuna's
        return "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith(("from .", "``_"))
        )

    users = sorted(
        str(p.relative_to(ROOT)) for p in SRC.rglob("*.py") if p.name != "_optuna.py" and private.search(code(p))
    )
    assert users == [], f"private Optuna names outside meminject/store/_optuna.py: {users}"


def test_the_coordinator_reads_model_sizes_without_loading_weights(monkeypatch):
    import meminject.engine._models as models
    from meminject.search._settings import load_sweep
    from meminject.search._study import resolve_space

    def refuse(*args, **kwargs):
        raise AssertionError("the coordinator loaded a model")

    monkeypatch.setattr(models, "load_model", refuse)
    for model in ("model=tiny", "model=smollm2-135m"):
        spec, _ = load_sweep(["sweep=tpe", model])
        _, space = resolve_space(spec)
        assert space.distributions["injection.layer"].high == (2 if model == "model=tiny" else 29)


@pytest.mark.parametrize(
    "command, keys",
    [
        ("sweep", ["sweep=", "n_trials=", "workers=", "study=", "storage=", "heartbeat=", "grace=", "progress="]),
        ("worker", ["study=", "storage=", "worker_index=", "max_trials="]),
        ("best", ["study=", "storage=", "top=", "distinct=", "heldout=", "controls=", "bootstrap="]),
        ("eval", ["injection.layer=", "memory.encoding=", "metric.answer="]),
    ],
)
def test_help_lists_the_commands_keys(command, keys, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    missing = [k for k in keys if k not in out]
    assert not missing, missing
    if command == "sweep":
        from meminject.search._settings import presets

        for name, (_, description) in presets().items():
            assert description and re.search(rf"^\s+{re.escape(name)}\s+{re.escape(description)}$", out, re.M), name


def test_presets_say_what_they_optimize():
    from omegaconf import OmegaConf

    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        preset = OmegaConf.load(path)
        objectives = list(preset.objective) if not isinstance(preset.objective, str) else [preset.objective]
        directions = list(preset.direction) if not isinstance(preset.direction, str) else [preset.direction]
        assert (
            objectives[0] in ("mean_gain", "specific_gain")
            and directions[0] == "maximize"
            and len(objectives) == len(directions)
        ), path.name


def test_a_local_conf_folder_adds_a_model_option(tmp_path, monkeypatch):
    from meminject.config import load_run_config as compose_config

    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "mytiny.yaml").write_text("defaults:\n  - tiny\n  - _self_\nname: mytiny\n")
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["model=mytiny"])
    assert cfg.model.name == "mytiny" and cfg.model.tiny.n_layers == 3
    assert compose_config([]).model.name == "smollm2-135m"  # the packaged default is untouched


def test_a_tied_model_with_raw_weights_searches_embed_and_unembed_once(caplog):
    """SmolLM2's W_U is W_Eᵀ as shipped (checked on the weights in test_injection): with raw
    weights the two encodings are one point, so the axis keeps unembed; paper weights keep both."""
    import optuna.distributions as od

    from meminject.search._settings import load_sweep
    from meminject.search._study import resolve_space

    spec, _ = load_sweep(["sweep=tpe", "model.weights=raw"])
    _, space = resolve_space(spec)
    assert space.distributions["memory.encoding"] == od.CategoricalDistribution(("unembed", "layer"))
    assert sum("embed and unembed are the same point" in r.getMessage() for r in caplog.records) == 1
    spec, _ = load_sweep(["sweep=tpe", "model.weights=paper"])
    assert resolve_space(spec)[1].distributions["memory.encoding"] == od.CategoricalDistribution(
        ("unembed", "embed", "layer")
    )
    spec, _ = load_sweep(["sweep=tpe", "model=tiny", "model.weights=raw"])  # tiny is built untied
    assert resolve_space(spec)[1].distributions["memory.encoding"] == od.CategoricalDistribution(
        ("unembed", "embed", "layer")
    )
