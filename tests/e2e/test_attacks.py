"""The sweep under its users' worst day: time zones, two sweeps on one study, Ctrl-C and SIGTERM
with worker processes, a killed coordinator, a torn journal. Each failed on the old sweep layer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import TINY, complete_points, env, load, mlflow_runs, run_cli, start_cli

pytestmark = pytest.mark.slow  # worker processes


def _sweep(tmp_path: Path, *extra: str, **kwargs) -> subprocess.Popen:
    args = [
        "sweep",
        *TINY,
        f"storage={tmp_path / 'optuna.journal'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "progress=false",
        *extra,
    ]
    return start_cli(*args, cwd=tmp_path, **kwargs)


def _states(study: optuna.Study) -> Counter:
    return Counter(t.state.name for t in study.get_trials())


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo", "Asia/Kolkata"])
def test_two_workers_under_a_time_zone_off_utc_run_every_point_once(tmp_path, zone):
    # West of UTC the old stale check read Optuna's naive local start times as UTC: a trial
    # just started looked hours old, another worker failed it, and the owner crashed.
    proc = _sweep(
        tmp_path,
        "sweep=paper_grid",
        "study=tz",
        "workers=2",
        "injection.tweak=choice(1,2,3)",
        "memory.encoding=choice(unembed,embed)",
        env=env(TZ=zone),
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    study = load(tmp_path, "tz")
    assert set(complete_points(study).values()) == {1} and len(complete_points(study)) == 3 * 3 * 2
    assert _states(study) == Counter({"COMPLETE": 18}), "no trial failed as falsely stale"


@pytest.mark.parametrize("preset", ["grid", "tpe"])
def test_two_sweeps_started_at_once_on_one_study_run_each_point_once_with_one_parent_run(tmp_path, preset):
    axes = (
        ["sweep=paper_grid", "injection.tweak=choice(1,2,3,4)", "memory.encoding=choice(unembed,embed)"]
        if preset == "grid"
        else ["sweep=tpe", "n_trials=10"]
    )
    procs = [_sweep(tmp_path, *axes, "study=both") for _ in range(2)]  # a fresh study and a fresh MLflow database
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
    study = load(tmp_path, "both")
    points = complete_points(study)
    assert set(points.values()) == {1}, f"points run twice: {[p for p, n in points.items() if n > 1]}"
    assert sum(points.values()) == (3 * 4 * 2 if preset == "grid" else 10)
    given_back = [t for t in study.get_trials(states=(TrialState.FAIL,)) if not t.user_attrs.get("meminject.surplus")]
    assert not given_back, "only surplus (given-back) trials may be FAIL"
    parents = mlflow_runs(tmp_path, "sweep")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trials = mlflow_runs(tmp_path, "trial")
    assert sorted(r.info.status for r in trials) == ["FINISHED"] * sum(points.values())


def _wait_for_complete(tmp_path: Path, name: str, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended early:\n{proc.stdout.read()[-3000:]}")
        try:
            if len(load(tmp_path, name).get_trials(states=(TrialState.COMPLETE,))) >= n:
                return
        except KeyError:
            pass
        time.sleep(0.2)
    raise AssertionError("timed out waiting for trials")


def _nothing_running(tmp_path: Path, name: str) -> None:
    study = load(tmp_path, name)
    assert not study.get_trials(states=(TrialState.RUNNING,)), _states(study)
    assert [r.info.run_name for r in mlflow_runs(tmp_path) if r.info.status == "RUNNING"] == []


def _one_finished_run_per_complete_trial(tmp_path: Path, name: str, store: str | None = None) -> None:
    complete = {t.number for t in load(tmp_path, name).get_trials(states=(TrialState.COMPLETE,))}
    runs = Counter(
        int(r.data.tags["meminject.trial_number"])
        for r in mlflow_runs(store or tmp_path, "trial", study=name)
        if r.info.status == "FINISHED"
    )
    assert set(runs) == complete and set(runs.values()) == {1}, (sorted(complete), runs)


@pytest.mark.parametrize(  # each signal and each writer once (the four pairs took 4 minutes)
    "how, writer",
    [("ctrl-c to the process group", "inline"), ("SIGTERM to the sweep", "process")],
)
def test_an_interrupt_with_two_workers_leaves_nothing_running_and_resumes_at_once(tmp_path, how, writer):
    grid = [
        "sweep=paper_grid",
        "study=intr",
        "workers=2",
        "injection.tweak=choice(1,2,3,4)",
        "memory.encoding=choice(unembed,embed)",
        f"tracking.writer={writer}",
    ]
    proc = _sweep(tmp_path, *grid, trial_delay_s=0.5, start_new_session=True)
    _wait_for_complete(tmp_path, "intr", 4, proc)
    if how.startswith("ctrl-c"):
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: every process of the group
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    _nothing_running(tmp_path, "intr")
    assert mlflow_runs(tmp_path, "sweep")[0].info.status == "KILLED"
    started = time.monotonic()
    resume = _sweep(tmp_path, *grid)
    out, _ = resume.communicate(timeout=600)
    assert resume.returncode == 0, out[-3000:]
    assert time.monotonic() - started < 100, "the resume waited out a grace period (120 s)"
    points = complete_points(load(tmp_path, "intr"))
    assert len(points) == 3 * 4 * 2 and set(points.values()) == {1}
    _nothing_running(tmp_path, "intr")
    _one_finished_run_per_complete_trial(tmp_path, "intr")


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_a_worker_killed_with_runs_pending_in_its_writer_loses_none_the_resume_writes_each_once(tmp_path):
    """tracking.writer=process with a slow writer (1 s a run): the worker is SIGKILLed once 4
    trials are told, while their runs wait in the writer's queue. The orphaned writer stops
    (never writing beside a resume), and the rerun writes every told trial's run, each once."""
    from _slow_meminject import WRITER_DELAY_ENV

    grid = [
        "sweep=paper_grid",
        "study=pend",
        "injection.tweak=choice(1,2,3,4)",
        "memory.encoding=choice(unembed,embed)",
    ]
    # heartbeat=1 grace=5: the killed worker's running trial is stale after 5 s, not the default 120
    grid += ["tracking.writer=process", "workers=1", "heartbeat=1", "grace=5"]
    proc = _sweep(tmp_path, *grid, trial_delay_s=0.05, env=env(**{WRITER_DELAY_ENV: "1"}))
    _wait_for_complete(tmp_path, "pend", 4, proc)
    writers = _children(proc.pid)
    proc.kill()  # SIGKILL: no cleanup, no wait for the writer
    proc.communicate(timeout=60)
    told = {t.number for t in load(tmp_path, "pend").get_trials(states=(TrialState.COMPLETE,))}
    written = {
        int(r.data.tags["meminject.trial_number"])
        for r in mlflow_runs(tmp_path, "trial", study="pend")
        if r.info.status == "FINISHED"
    }
    assert len(told) >= 4 and told - written, (told, written)  # runs were pending at the kill
    assert writers and all(_gone(pid, 10) for pid in writers), writers  # the orphan writer stopped
    resume = _sweep(tmp_path, *grid)
    out, _ = resume.communicate(timeout=600)
    assert resume.returncode == 0, out[-3000:]
    assert len(complete_points(load(tmp_path, "pend"))) == 3 * 4 * 2
    _one_finished_run_per_complete_trial(tmp_path, "pend")


def test_a_sigterm_while_a_trial_run_is_being_created_leaves_no_run_running(tmp_path):
    """The signal lands just after MLflow created the trial's run, before meminject knew its id:
    the run must still be closed (signals are held while it is created)."""
    from conftest import sweep_args

    script = f"""
import os, signal, sys
from meminject.cli import main
from meminject.tracking._tracker import Tracker
real = Tracker.start_trial
def start_then_terminated(self, *a, **k):
    run_id = real(self, *a, **k)
    os.kill(os.getpid(), signal.SIGTERM)  # delivered before start_trial returns
    return run_id
Tracker.start_trial = start_then_terminated
sys.exit(main({sweep_args(tmp_path, "sweep=paper_grid", "study=t", "injection.tweak=choice(1,2)", "memory.encoding=choice(unembed)")!r}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 130, proc.stderr[-3000:]
    _nothing_running(tmp_path, "t")
    assert [r.info.status for r in mlflow_runs(tmp_path, "trial")] == ["FAILED"]


def test_workers_end_with_a_killed_coordinator(tmp_path):
    psutil = pytest.importorskip("psutil")
    grid = [
        "sweep=paper_grid",
        "study=orphan",
        "workers=2",
        "injection.tweak=choice(1,2,3,4,5,6)",
        "memory.encoding=choice(unembed,embed)",
    ]
    proc = _sweep(tmp_path, *grid, trial_delay_s=0.5)
    _wait_for_complete(tmp_path, "orphan", 2, proc)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 2
    proc.kill()
    proc.communicate(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "workers outlived their coordinator"
    _nothing_running(tmp_path, "orphan")  # they failed their trials and closed the parent run


def test_a_torn_journal_is_repaired_on_open_and_nothing_complete_is_lost(tmp_path):
    grid = [
        "sweep=paper_grid",
        "study=torn",
        "injection.tweak=choice(1,2)",
        "memory.encoding=choice(unembed)",
        "tracking.enabled=false",
    ]
    first = _sweep(tmp_path, *grid)
    assert first.wait(timeout=600) == 0, first.stdout.read()
    journal = tmp_path / "optuna.journal"
    data = journal.read_bytes()
    journal.write_bytes(data + data.splitlines(keepends=True)[-1][:17])  # a record cut mid-write
    best = run_cli("best", "study=torn", f"storage={journal}", "heldout=false", cwd=tmp_path, timeout=300)
    assert best.returncode == 0, best.stderr[-2000:]
    assert "repaired the study journal" in best.stderr and "Traceback" not in best.stderr
    assert json.loads(journal.read_bytes().splitlines()[-1])  # ends on a complete record again
    assert len(load(tmp_path, "torn").get_trials(states=(TrialState.COMPLETE,))) == 3 * 2
    again = _sweep(tmp_path, *grid)  # appends to the repaired journal (it stores the space again)
    assert again.wait(timeout=600) == 0, again.stdout.read()
    assert len(load(tmp_path, "torn").get_trials(states=(TrialState.COMPLETE,))) == 3 * 2


def test_a_full_disk_under_outputs_is_one_line_and_closes_the_parent_run(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        (disk / "ballast").write_bytes(b"\0" * (256 * 1024 - 8192))  # leave a couple of pages
        with pytest.raises(OSError):
            (disk / "probe").write_bytes(b"\0" * 65536)
        args = [
            "sweep",
            *TINY,
            f"storage={tmp_path / 'optuna.journal'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "progress=false",
            "sweep=paper_grid",
            "study=full",
            "injection.tweak=choice(1,2)",
            "memory.encoding=choice(unembed)",
            "tracking.trial_figures=false",
        ]
        proc = run_cli(*args, cwd=disk, env=env(MPLCONFIGDIR=str(tmp_path / "mpl")))
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("meminject: error: ") and "No space left on device" in lines[-1], lines[-3:]
        assert "Traceback" not in proc.stderr
        assert len(load(tmp_path, "full").get_trials(states=(TrialState.COMPLETE,))) == 3 * 2  # the results are kept
        assert [r.info.status for r in mlflow_runs(tmp_path, "sweep")] == ["FAILED"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_an_mlflow_store_that_fills_under_the_writer_is_one_line_and_the_resume_writes_every_run(tmp_path):
    """tracking.writer=process with the MLflow store on a disk that is full once the sweep has
    begun: the writer's failure is one line (exit 2), every computed result stays in the study,
    and after space is freed the rerun writes each complete trial's run once."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        args = [
            "sweep",
            *TINY,
            f"storage={tmp_path / 'optuna.journal'}",
            f"tracking.uri=sqlite:///{disk / 'mlflow.db'}",
            "progress=false",
            "sweep=paper_grid",
            "study=fillw",
            "injection.tweak=range(1,16)",
            "memory.encoding=choice(unembed)",
            "tracking.writer=process",
            "tracking.trial_figures=false",
        ]
        run_cli(*args, "workers=0", cwd=tmp_path, check=True)  # the store and the parent run, while there is room
        room = os.statvfs(disk)
        # room to open the store (SQLite's shared memory and log), not for the trials' runs
        (disk / "ballast").write_bytes(b"\0" * (room.f_bavail * room.f_frsize - 160 * 1024))
        proc = run_cli(*args, cwd=tmp_path, env=env(MPLCONFIGDIR=str(tmp_path / "mpl")))
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.endswith(" …")]
        # besides the error: the wait for the writer, and where the ranked sites went (the parent run is on that disk)
        said = ("waiting for the MLflow writer: ", "note: the results are in ", "note: parameter importances")
        notes = [line for line in lines if line.startswith(said)]
        assert len(lines) - len(notes) == 1 and len(notes) <= 3, proc.stderr
        assert lines[-1].startswith("meminject: error: "), lines
        assert "full" in lines[-1] and "saved in the study" in lines[-1], lines[-1]
        assert "Traceback" not in proc.stderr
        assert load(tmp_path, "fillw").get_trials(states=(TrialState.COMPLETE,))  # results kept
        (disk / "ballast").unlink()
        again = run_cli(*args, cwd=tmp_path, env=env(MPLCONFIGDIR=str(tmp_path / "mpl")))
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(complete_points(load(tmp_path, "fillw"))) == 3 * 15
        _one_finished_run_per_complete_trial(tmp_path, "fillw", f"sqlite:///{disk / 'mlflow.db'}")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
