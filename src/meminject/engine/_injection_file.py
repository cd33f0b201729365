"""``injection.json``: one exported injection, typed and validated on load.

An export (``meminject export``) writes one folder holding ``injection.json``. The record says
everything that applies the injection again (model and a fingerprint of its exact weights,
hook, layer, head, τ and scale with the residual norm a relative scale used, encoding,
positions, memory type) and where it came from (study, trial, train and held-out gains with
intervals, the verdict and its controls, the meminject version), sealed by a ``digest`` of its
fields. :func:`read_record` checks every field: a missing one, a value of the wrong type or
outside its choices, a format version this meminject does not know, or any edit after export
(the digest no longer matches) is refused in one line that names the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config._choices import ENCODINGS, HOOKS, MEMORY_TYPES, POSITIONS, SCALES, SITES
from ..core._errors import ConfigError, MemInjectError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "InjectionFileError",
    "ModelRecord",
    "InjectionRecord",
    "read_record",
    "write_record",
    "sealed",
    "weights_fingerprint",
    "meminject_version",
    "FILE_NAME",
]

FORMAT = "meminject.injection"
FORMAT_VERSION = 1  # bump on any change of the fields below; read_record refuses others
FILE_NAME = "injection.json"
DTYPES = ("float32", "bfloat16", "float16")


class InjectionFileError(ConfigError):
    """An ``injection.json`` is missing, unreadable, of an unknown version, or a field is invalid."""


def meminject_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meminject")
    except PackageNotFoundError:  # pragma: no cover - a source checkout without an install
        return "0.0.0+unknown"


def weights_fingerprint(model: Any) -> str:
    """SHA-256 of a Hugging Face model's weights as float32: every state-dict entry's name,
    shape and values, in name order (the same number for the same checkpoint, however loaded)."""
    import torch

    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class ModelRecord:
    """The model an injection was found on, and how to load it again."""

    name: str  # the conf/model preset (meminject apply loads it)
    architecture: str  # the Hugging Face class (LlamaForCausalLM, Gemma3ForCausalLM)
    weights: str  # raw | paper (TransformerLens processing: not what plain transformers holds)
    fingerprint: str  # weights_fingerprint of the float32 checkpoint
    n_layers: int
    d_model: int
    prepend_bos: bool  # prompts and a layer-encoded memory start with BOS
    bos_token_id: int | None
    overrides: list[str]  # the study's model.* overrides (the preset plus what it changed)


@dataclass(frozen=True)
class InjectionRecord:
    """One exported injection: the site and strength, the memory's encoding, and its record."""

    model: ModelRecord
    hook: str  # attn_out | mlp_out | resid_pre
    hook_name: str  # the TransformerLens hook it touched (blocks.L.hook_attn_out)
    layer: int
    depth: float  # the layer's relative depth in the model (0 = first, 1 = last)
    head: int | None
    site: str  # layer | head | head_subspace
    positions: str  # all | last
    tau: float
    scale: str  # absolute | relative
    residual_norm: float | None  # relative: v is rescaled to this norm before τ (None when absolute)
    encoding: str
    memory_type: str
    dtype: str  # the dtype the sweep ran in
    study: dict[str, Any]  # name, trial, rank, label, objective, storage
    gains: dict[str, Any]  # train and held-out gains, CIs, specific gains (None where not measured)
    verdict: str | None  # meminject best's held-out verdict (None without a held-out check)
    controls: dict[str, Any]  # per control: the held-out gap and its interval
    meminject_version: str
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=False, default=str)

    @property
    def label(self) -> str:
        head = f" h{self.head}" if self.site != "layer" and self.head is not None else ""
        return f"{self.model.name} L{self.layer}{head} {self.hook} τ{self.tau:.3g} {self.scale} {self.encoding}"


def digest_of(data: dict) -> str:
    """SHA-256 of a record's fields (all but ``digest``), as canonical JSON: what was exported."""
    body = {k: v for k, v in data.items() if k != "digest"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed(data: dict) -> dict:
    """The record's fields with their ``digest``, as written: an edit after export is refused on load."""
    return {**{k: v for k, v in data.items() if k != "digest"}, "digest": digest_of(data)}


def write_record(folder: Path, record: InjectionRecord) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    tmp = path.with_name(f".{FILE_NAME}.partial")
    tmp.write_text(json.dumps(sealed(json.loads(record.to_json())), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- validation


def _fail(path: Path, key: str, what: str) -> MemInjectError:
    return InjectionFileError(f"{path}: field {key!r} {what} (re-export it: meminject export study=NAME)")


def _check(path: Path, data: dict, key: str, kind: type | tuple, *, null: bool = False, choices=None) -> Any:
    if key not in data:
        raise _fail(path, key, "is missing")
    value = data[key]
    if value is None and null:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise _fail(path, key, f"must be {' or '.join(k.__name__ for k in kinds)}, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(path, key, f"must be finite, not {value!r}")
    if choices is not None and value not in choices:
        raise _fail(path, key, f"is {value!r}, not one of {', '.join(map(str, choices))}")
    return value


def _model(path: Path, data: Any) -> ModelRecord:
    if not isinstance(data, dict):
        raise _fail(path, "model", "must be an object")
    name = _check(path, data, "name", str)
    arch = _check(path, data, "architecture", str)
    weights = _check(path, data, "weights", str, choices=("raw", "paper"))
    fingerprint = _check(path, data, "fingerprint", str)
    if not fingerprint.startswith("sha256:") or len(fingerprint) != 7 + 64:
        raise _fail(path, "model.fingerprint", f"is not a sha256 fingerprint: {fingerprint!r}")
    n_layers = _check(path, data, "n_layers", int)
    d_model = _check(path, data, "d_model", int)
    if n_layers < 1 or d_model < 1:
        raise _fail(path, "model.n_layers", "and model.d_model must be positive")
    bos = _check(path, data, "prepend_bos", bool)
    bos_id = _check(path, data, "bos_token_id", int, null=True)
    overrides = _check(path, data, "overrides", list)
    if not all(isinstance(o, str) for o in overrides):
        raise _fail(path, "model.overrides", "must be a list of key=value strings")
    return ModelRecord(name, arch, weights, fingerprint, n_layers, d_model, bos, bos_id, list(overrides))


def read_record(folder: str | Path) -> InjectionRecord:
    """The validated record of an export folder (or of an ``injection.json`` itself)."""
    path = Path(folder)
    path = path / FILE_NAME if path.is_dir() else path
    if not path.is_file():
        raise InjectionFileError(f"no {FILE_NAME} at {path} (make one with: meminject export study=NAME)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InjectionFileError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InjectionFileError(f"{path}: not a meminject injection (its 'format' is not {FORMAT!r})")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise InjectionFileError(
            f"{path}: format_version {version!r} is unknown to meminject {meminject_version()} (it reads version {FORMAT_VERSION}); "
            "use the meminject that wrote it, or re-export"
        )
    digest = data.pop("digest", None)
    known = {f.name for f in fields(InjectionRecord)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(path, unknown[0], "is not a field of an injection record")
    model = _model(path, data.get("model"))
    layer = _check(path, data, "layer", int)
    if not 0 <= layer < model.n_layers:
        raise _fail(path, "layer", f"is {layer}, outside the model's layers 0..{model.n_layers - 1}")
    depth = _check(path, data, "depth", (float, int))
    if not 0.0 <= depth <= 1.0:
        raise _fail(path, "depth", f"is {depth}, outside [0, 1]")
    site = _check(path, data, "site", str, choices=SITES)
    head = _check(path, data, "head", int, null=site == "layer")
    tau = _check(path, data, "tau", (float, int))
    if tau < 0:
        raise _fail(path, "tau", f"is {tau}, must be >= 0")
    scale = _check(path, data, "scale", str, choices=SCALES)
    norm = _check(path, data, "residual_norm", (float, int), null=scale == "absolute")
    if norm is not None and norm <= 0:
        raise _fail(path, "residual_norm", f"is {norm}, must be > 0")
    record = InjectionRecord(
        model=model,
        hook=_check(path, data, "hook", str, choices=HOOKS),
        hook_name=_check(path, data, "hook_name", str),
        layer=layer,
        depth=float(depth),
        head=head,
        site=site,
        positions=_check(path, data, "positions", str, choices=POSITIONS),
        tau=float(tau),
        scale=scale,
        residual_norm=None if norm is None else float(norm),
        encoding=_check(path, data, "encoding", str, choices=ENCODINGS),
        memory_type=_check(path, data, "memory_type", str, choices=MEMORY_TYPES),
        dtype=_check(path, data, "dtype", str, choices=DTYPES),
        study=_check(path, data, "study", dict),
        gains=_check(path, data, "gains", dict),
        verdict=_check(path, data, "verdict", str, null=True),
        controls=_check(path, data, "controls", dict),
        meminject_version=_check(path, data, "meminject_version", str),
        notes=list(_check(path, data, "notes", list)),
    )
    if record.hook_name != f"blocks.{layer}.hook_{record.hook}" and record.site != "head":
        raise _fail(path, "hook_name", f"is {record.hook_name!r}, not the hook of layer {layer}'s {record.hook}")
    for key in ("name", "trial"):
        if key not in record.study:
            raise _fail(path, f"study.{key}", "is missing")
    for key in ("train_gain", "heldout_gain"):
        if key not in record.gains:
            raise _fail(path, f"gains.{key}", "is missing")
    if digest is None:
        raise _fail(path, "digest", "is missing")
    if digest != digest_of(data):
        raise InjectionFileError(
            f"{path}: was edited after export (its digest does not match its fields); "
            "re-export the site (meminject export study=NAME); to try another value, override it on "
            "meminject apply's command line (e.g. injection.tweak=...)"
        )
    return record
