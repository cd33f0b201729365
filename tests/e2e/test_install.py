"""meminject as an installed tool: a wheel in a fresh virtual environment, run from an empty
folder with no checkout on the path (configs and presets come from the package)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT, env

pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment


def _run(*cmd: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_a_wheel_in_a_fresh_venv_evaluates_and_sweeps_from_an_empty_folder(tmp_path):
    source = tmp_path / "src-copy"  # build from a copy: no build/ or egg-info in the checkout
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "mlruns", "outputs", "*.egg-info", "build", "__pycache__", ".pytest_cache"
        ),
    )
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path / "dist"),
        str(source),
        cwd=tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("meminject-*.whl"))
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    # The dependencies (torch, mlflow, ...) come from this environment's site-packages, added as
    # a plain path: its .pth files (the editable checkout's finder among them) are not run.
    site = Path(
        _run(
            str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    run_env = {k: v for k, v in env().items() if k not in ("PYTHONPATH", "MEMINJECT_ROOT")}
    where = _run(
        str(python),
        "-c",
        "import meminject, meminject.core._paths as p; print(meminject.__file__); print(p.conf_dir())",
        cwd=empty,
        env=run_env,
    ).stdout
    assert str(venv) in where and str(ROOT) not in where, where
    meminject = str(venv / "bin" / "meminject")
    out = _run(meminject, "eval", "model=tiny", "injection.layer=1", "data.limit=4", cwd=empty, env=run_env).stdout
    assert "mean gain" in out
    assert (empty / "mlruns" / "mlflow.db").exists() and list(
        (empty / "outputs" / "eval").iterdir()
    )  # results go to the working folder
    help_text = _run(meminject, "sweep", "--help", cwd=empty, env=run_env).stdout
    assert "smoke" in help_text and "n_trials=" in help_text
    # a preset of the user's own, in ./sweeps, runs beside the packaged ones
    (empty / "sweeps").mkdir()
    (empty / "sweeps" / "mine.yaml").write_text(
        'description: "my two layers"\nsampler: grid\nn_trials: null\nparams:\n  injection.layer: choice(0, 2)\n'
    )
    out = _run(
        meminject, "sweep", "sweep=mine", "model=tiny", "data.limit=4", "progress=false", cwd=empty, env=run_env
    ).stdout
    assert "2 complete trials" in out
