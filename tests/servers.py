"""Throw-away servers for end-to-end tests: free loopback ports, HTTP readiness, and a
PostgreSQL cluster in a temporary directory (Debian's postgresql; as root, run as `postgres`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def require(available: bool, what: str) -> None:
    """Skip a test whose system dependency is missing, except in CI (``MEMINJECT_CI=1``, set by
    `.ci/run`, which installs them): there a missing dependency fails the test."""
    if not available:
        if os.environ.get("MEMINJECT_CI"):
            pytest.fail(f"{what} is missing in CI")
        pytest.skip(f"{what} is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited before answering {url}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@contextmanager
def mlflow_server(folder: Path) -> Iterator[int]:
    """A throw-away `mlflow server` on a free loopback port (SQLite store and artifacts in
    ``folder``); yields the port once it answers, and stops it afterwards."""
    import sys

    port = free_port()
    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen(
        [
            exe,
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=180, proc=server)
        yield port
    finally:
        server.terminate()
        server.wait(30)


def postgres_bin() -> Path | None:
    """The directory of initdb/pg_ctl (Debian keeps them out of PATH), or None."""
    for candidate in [shutil.which("pg_ctl"), *sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)]:
        if candidate:
            return Path(candidate).resolve().parent
    return None


@contextmanager
def postgres_cluster(password: str, databases: tuple[str, ...]) -> Iterator[str]:
    """Start a PostgreSQL cluster on a free loopback port; yields ``user:password@host:port``.

    The user ``meminject`` owns ``databases``; the cluster and its files go away afterwards.
    """
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="meminject-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the package's `postgres` user
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres")

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True, cwd=root)

    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "meminject",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
        )
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=200",
            "start",
        )
        env = {**os.environ, "PGPASSWORD": password}
        for name in databases:
            subprocess.run(
                [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "meminject", name],
                check=True,
                capture_output=True,
                env=env,
            )
        yield f"meminject:{password}@127.0.0.1:{port}"
    finally:
        if data.exists():
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                cwd=root,
            )
        shutil.rmtree(root, ignore_errors=True)
