"""Shared fixtures: offline, composed from the real configs, models loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEMINJECT_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()
os.environ.setdefault("MEMINJECT_DATA_DIR", str(SHARED_DATA))
torch.set_grad_enabled(False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "handwritten_obscure_explicit_data.csv").exists():
        pytest.skip(f"the paper's data is not at {SHARED_DATA}")
    return SHARED_DATA


def compose(*overrides: str):
    from meminject.config import compose_config

    return compose_config(list(overrides))


@pytest.fixture(scope="session")
def tiny_cfg():
    return compose("model=tiny", "model.device=cpu", "tracking.enabled=false")


@pytest.fixture(scope="session")
def tiny(tiny_cfg):
    from meminject.models import load_model

    return load_model(tiny_cfg.model)


@pytest.fixture(scope="session")
def tiny_paper():
    from meminject.models import load_model

    return load_model(compose("model=tiny", "model.device=cpu", "model.weights=paper").model)


@pytest.fixture(scope="session")
def demo(tiny_cfg):
    from meminject.data import load_dataset

    return load_dataset(tiny_cfg.data)


@pytest.fixture(scope="session")
def smol():
    from meminject.models import load_model

    return load_model(compose("model=smollm2-135m", "model.device=cpu", "model.weights=raw").model)


@pytest.fixture()
def mlflow_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
