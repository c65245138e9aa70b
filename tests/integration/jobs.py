"""Driving real studio processes from tests: a studio home's environment, `wmtp-studio` and `wmtp-worker`
subprocesses, and a run's job processes found in /proc (no psutil), to kill only the trainer or read the GPUs it
was given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
STUDIO = "from wmtp_studio.studio_cli import studio_main; studio_main()"
WORKER = "from wmtp_studio.workers.daemon import main; main()"


def studio_env(
    home: Path, *, database_url: str | None = None, queue_url: str | None = None
) -> dict[str, str]:
    """This process's environment without its WMTP_* variables, for a studio in `home` (SQLite database and
    queue there unless URLs are given)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WMTP_")}
    return base | {
        "WMTP_HOME": str(home),
        "WMTP_DATABASE_URL": database_url or f"sqlite:///{home / 'studio.db'}",
        "WMTP_QUEUE_URL": queue_url or f"sqlite:///{home / 'queue.db'}",
        "HF_HUB_OFFLINE": "1",
    }


def studio(env: dict[str, str], *args: str) -> str:
    """`wmtp-studio ARGS` in a subprocess; its stdout (a failure raises)."""
    cmd = [sys.executable, "-c", STUDIO, *args]
    return subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    ).stdout


def studio_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`wmtp-studio ARGS` in a subprocess, whatever its exit code."""
    cmd = [sys.executable, "-c", STUDIO, *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`wmtp-worker ARGS` in a subprocess, its output in `log_path`."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, *args], env=env, cwd=ROOT, stdout=log, stderr=log
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (jobs hand back), SIGKILL if it has not exited within 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Proc(NamedTuple):
    pid: int
    state: str
    ppid: int
    session: int


def processes() -> list[Proc]:
    """Every process now, from its /proc/PID/stat line."""
    procs = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        state, ppid, _pgrp, session = stat[stat.rfind(")") + 2 :].split()[:4]
        procs.append(Proc(int(entry), state, int(ppid), int(session)))
    return procs


def session_left(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid` (read here, apart from workers/supervise.py's sweep)."""
    return [p.pid for p in processes() if p.state != "Z" and p.session == sid]


def child_sessions(pid: int) -> list[int]:
    """Children of `pid` that lead their own session (the trainers a worker started)."""
    return [p.pid for p in processes() if p.ppid == pid and p.session == p.pid]


def job_processes(run_dir: Path) -> dict[int, list[str]]:
    """Live processes whose command line names `run_dir` (the launcher and the trainer ranks), with their argv."""
    procs = {}
    for proc in processes():
        try:
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # exited meanwhile
        if str(run_dir) in argv and proc.state != "Z":
            procs[proc.pid] = argv
    return procs


def trainer_pids(run_dir: Path) -> list[int]:
    """The `python -m wmtp_studio.train` ranks of the run, not the `accelerate launch` parent."""
    return [
        pid
        for pid, argv in job_processes(run_dir).items()
        if "wmtp_studio.train" in argv and "accelerate.commands.launch" not in argv
    ]


def visible_devices(run_dir: Path) -> set[str]:
    """CUDA_VISIBLE_DEVICES of every live process of the run (one value when they agree)."""
    values = set()
    for pid in job_processes(run_dir):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"CUDA_VISIBLE_DEVICES="):
                values.add(item.split(b"=", 1)[1].decode())
    return values


def wait_for(
    cond: Callable[[], object], timeout: float, what: str, *, every: float = 0.2, log: Path | None = None
) -> None:
    """Poll `cond` every `every` seconds until it holds: the one way tests wait for other processes and threads.
    After `timeout` seconds fail naming `what` (and showing the end of `log`, a worker's say)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            said = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            tail = f"; the end of {log.name}:\n{said}" if log else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{tail}")
        time.sleep(every)
