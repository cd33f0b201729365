"""Compose the Hydra configs with command-line overrides, strictly.

Strict means: an unknown key is refused by name (also with Hydra's ``+key=value``, which
would otherwise add it), a near miss gets a suggestion, and every enumerated key is checked
against its allowed values before anything loads. Each failure is one :class:`ConfigError`
line. The packaged ``conf/`` is the primary config folder; ``./conf`` of the working
directory adds options (``model=my_model`` from ``./conf/model/my_model.yaml``).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

from ..core._errors import ConfigError, first_line
from ._choices import CHOICES
from ..core._paths import conf_dir, user_conf_dir

__all__ = [
    "compose_config",
    "config_options",
    "flat_config",
    "to_yaml",
    "check_choices",
    "choices",
    "check_override_syntax",
]

GROUPS = ("model", "data", "memory", "injection", "tracking", "perf")


def config_options(group: str) -> list[str]:
    folders = [conf_dir() / group] + ([user_conf_dir() / group] if user_conf_dir() else [])
    return sorted({p.stem for folder in folders for p in folder.glob("*.yaml") if not p.stem.startswith("_")})


def choices() -> dict[str, tuple[str, ...]]:
    """Every enumerated config key and its allowed values (:data:`._choices.CHOICES`)."""
    return dict(CHOICES)


def check_choices(cfg: DictConfig) -> None:
    """Refuse a bad value of any enumerated key, naming the key and the allowed values."""
    flat = flat_config(cfg)
    for key, allowed in choices().items():
        if key in flat and str(flat[key]) not in allowed:
            raise ConfigError(f"{key}={flat[key]!r} is not one of {', '.join(allowed)}")


def flat_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf keys of a (resolved) config as ``a.b.c -> value`` (lists stay values)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _override_key(override: str) -> str:
    return re.split(r"[=@]", override.lstrip("+~"), maxsplit=1)[0].strip()


def _known_keys(base: DictConfig) -> list[str]:
    return sorted(
        set(flat_config(base)) | set(GROUPS) | {k for k in OmegaConf.to_container(base) if isinstance(k, str)}
    )


# Keys people reach for that live elsewhere, with why.
_MOVED = {
    "perf.dtype": "model.dtype (float32 | bfloat16 | float16 on CUDA): precision changes results, and perf.* keys never do",
}


def _unknown_key_error(key: str, base: DictConfig | None) -> ConfigError:
    if key in _MOVED:
        return ConfigError(f"unknown config key {key!r}: use {_MOVED[key]}")
    hint = ""
    if base is not None:
        # Compare leaf names within the key's section: "injection." alone must not make a match.
        section, _, leaf = key.rpartition(".")
        siblings = {k.rpartition(".")[2]: k for k in _known_keys(base) if k.rpartition(".")[0] == section}
        close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.7)
        if close:
            hint = f" (did you mean {siblings[close[0]]}?)"
    section = key.split(".")[0]
    where = f"conf/{section}/" if section in GROUPS else "conf/config.yaml"
    return ConfigError(f"unknown config key {key!r}{hint}; the keys are those in {where}")


def _compose(overrides: Sequence[str], config_name: str) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    local = user_conf_dir()
    search = [f"hydra.searchpath=[file://{local}]"] if local else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name=config_name, overrides=[*search, *overrides])
    finally:
        GlobalHydra.instance().clear()


def check_override_syntax(override: str) -> None:
    """Refuse an override Hydra's grammar cannot read, in one line that names it and shows how to
    quote its value (a URL with ``?a=b`` needs quotes: ``'tracking.uri="http://host/?a=b"'``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_overrides([override])
    except HydraException as exc:
        key, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(f"bad override {override!r}: expected key=value") from exc
        quote = "'" if '"' in value else '"'
        shell = '"' if quote == "'" else "'"
        raise ConfigError(
            f"bad override {override!r}: {first_line(exc)}; a value with '=', ',', spaces or brackets must be quoted for Hydra, "
            f"inside the shell's quotes: {shell}{key}={quote}{value}{quote}{shell}"
        ) from exc


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``conf/config.yaml`` with overrides; every failure becomes one ConfigError line."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    # '+key=value' adds a key in Hydra; meminject's keys all exist, so '+' only lets typos in.
    overrides = [o.lstrip("+") if o.startswith("+") else o for o in overrides]
    try:
        cfg = _compose(overrides, config_name)
    except MissingConfigException as exc:
        group = next((g for g in GROUPS if f"'{g}/" in str(exc) or f"{g}/" in str(exc)), None)
        if group:
            raise ConfigError(
                f"unknown {group} option ({first_line(exc, 2000)}); choose from: {', '.join(config_options(group))}"
            ) from exc
        raise ConfigError(first_line(exc, 2000)) from exc
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        text = first_line(exc, 2000)
        unknown = re.search(r"Could not override '([^']+)'|Key '([^']+)' is not in struct", text)
        if unknown:
            key = next(
                (_override_key(o) for o in overrides if _override_key(o) == (unknown.group(1) or "")),
                unknown.group(1) or unknown.group(2),
            )
            raise _unknown_key_error(key, _base_or_none(overrides, config_name)) from exc
        for override in overrides:  # a grammar error: name the override and how to quote it
            check_override_syntax(override)
        raise ConfigError(f"bad override: {text}") from exc
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config does not resolve: {first_line(exc, 2000)}") from exc
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required config value(s) not set: {', '.join(missing)}")
    return cfg  # values are checked once, as the typed config is built (meminject.config._build)


def _base_or_none(overrides: Iterable[str], config_name: str) -> DictConfig | None:
    """The config under the overrides' group choices alone (for suggestions), if it composes."""
    groups = [o for o in overrides if "." not in _override_key(o) and _override_key(o) in GROUPS]
    try:
        return _compose(groups, config_name)
    except Exception:  # noqa: BLE001 - only used to suggest a key
        return None


def to_yaml(cfg: DictConfig | dict) -> str:
    """``OmegaConf.to_yaml(cfg, resolve=True)``, text for text (tested), ~5× faster: the same
    representers on libyaml's C emitter. A sweep writes one per trial (its config.yaml) and keys
    its evaluators by four more, so OmegaConf's pure-Python emitter cost ~4 ms a trial."""
    import yaml

    container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return yaml.dump(container, Dumper=_yaml_dumper(), default_flow_style=False, allow_unicode=True, sort_keys=False)


_DUMPER: Any = None


def _yaml_dumper() -> Any:
    """PyYAML's Dumper with OmegaConf's string representer (it quotes strings a YAML reader
    would take for a bool or number, e.g. '1e-5'), on the C emitter when libyaml is there.
    The representer is OmegaConf's private ``OmegaConfDumper.str_representer``: touched here only."""
    global _DUMPER
    if _DUMPER is None:
        import yaml
        from omegaconf._utils import OmegaConfDumper

        _DUMPER = type("MemInjectYamlDumper", (getattr(yaml, "CDumper", yaml.Dumper),), {})
        _DUMPER.add_representer(str, OmegaConfDumper.str_representer)
    return _DUMPER
