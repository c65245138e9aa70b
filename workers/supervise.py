"""Supervise one claimed run: start the trainer, tail its metrics into the database, keep the lease, stop it.

Data-flow hops 4-6 of DESIGN.md. The trainer runs in a new session (so its whole process tree can be signalled
as one group and swept afterwards), writes only files, and is watched every `poll_s`:

- new complete lines of `run_dir/metrics.jsonl` are validated and ingested in one transaction per poll
  (idempotent on (run, seq), so re-reading after a truncation or a restart never duplicates);
- the lease is renewed about every `lease_s / 3`; a refused renewal means another worker holds the run now
  (fencing): the trainer is killed at once and nothing is recorded;
- a cancel request (database) or a worker shutdown (`stop`) sends SIGTERM to the group; the trainer checkpoints
  and exits 143; after `grace_s` the group is SIGKILLed.

On exit the status, exit code and the tail of `train.log` are recorded with the fencing token.

Ownership (rundir.py): before launching, wait for any trainer still holding the run directory (an orphan of a
killed worker checkpoints and exits on its own; see train/lifecycle.py) and check the directory's identity stamp.
A trainer that finds the directory taken exits EXIT_BUSY: the run is handed back, which is not a crash. When the
database fails (full or read-only disk) or its file is replaced (`database_ok` turns false), the trainer is
stopped with a checkpoint and nothing more is written; the lease then expires and the run is re-queued.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from wmtp_studio import rundir, store
from wmtp_studio.models import Run, RunStatus
from wmtp_studio.recipe import recipe_from_json
from wmtp_studio.rundir.checkpoints import resume_state
from wmtp_studio.rundir.metrics import MetricLine
from wmtp_studio.rundir.results import SAMPLES, eval_dir, read_results
from wmtp_studio.train.lifecycle import SUPERVISOR_ENV, supervisor_identity
from wmtp_studio.workers import mlflow_sync

ERROR_TAIL_LINES = 40


@dataclass(frozen=True)
class JobOutcome:
    """How a supervised job ended. `status` is succeeded, failed, cancelled, queued (handed back after a worker
    shutdown, to resume from its checkpoint later) or fenced (another worker holds the run; nothing recorded)."""

    status: str
    """Also `abandoned`: the database failed or was replaced; nothing could be recorded."""
    exit_code: int | None
    error_tail: str
    ingested: int
    """Rows inserted into the database by this supervision."""
    malformed: int = 0
    """metrics.jsonl lines that did not validate (skipped)."""
    pid: int | None = None
    """The trainer's pid, which is also its session and process-group id."""


def launch_command(run: Run, *, gpus: Sequence[int], processes: int) -> list[str]:
    """The trainer command: plain Python on CPU, `accelerate launch` on GPUs. `--resume` is always passed (the
    trainer starts fresh when there is no checkpoint)."""
    train = ["-m", "wmtp_studio.train", "--run-dir", run.run_dir, "--resume"]
    if not gpus:
        return [sys.executable, *train]
    multi = ["--multi_gpu"] if processes > 1 else []
    return [
        sys.executable,
        *("-m", "accelerate.commands.launch", "--num_processes", str(processes), *multi),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        *train,
    ]


class MetricsTail:
    """Reads complete lines of a growing metrics.jsonl by byte offset; starts over if the file got shorter."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.malformed = path, 0, 0

    def read(self) -> list[MetricLine]:
        try:
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < self.offset:  # the trainer resumed and cut the file back:
                    self.offset = 0  # re-read from the start (ingestion is idempotent)
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1  # a partial last line is left for the next poll
        self.offset += end
        lines: list[MetricLine] = []
        for raw in chunk[:end].splitlines():
            if not raw.strip():
                continue
            try:
                lines.append(MetricLine.model_validate_json(raw))
            except ValidationError:
                self.malformed += 1
        return lines


def rewind(engine: Engine, run_id: int, run_dir: Path) -> None:
    """Cut metrics.jsonl and the stored stream back to the latest checkpoint (or to nothing), as the trainer will.

    The trainer resumes from its latest complete checkpoint and rewrites the stream from the seq recorded there;
    doing the same before launch means no stale line past that point is ever read or kept.
    """
    state = resume_state(run_dir)
    path = run_dir / rundir.METRICS
    if path.exists() and path.stat().st_size > state.metrics_offset:
        os.truncate(path, state.metrics_offset)
    store.truncate_metrics(engine=engine, run_id=run_id, from_seq=state.seq)


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rfind(")") + 2 :].split()  # state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's group, reap it, then SIGKILL any straggler left in its session until none is."""
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    kill_stragglers(proc.pid)


def kill_stragglers(sid: int) -> bool:
    """SIGKILL every live process of session `sid` until none is left (5 s at most); whether none is."""
    for _ in range(50):
        left = session_pids(sid)
        if not left:
            return True
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    return False


_SIGNAL_DEATH = re.compile(r"died with <Signals\.SIG|Signal \d+ \(SIG[A-Z0-9]+\) received by PID")


def killed_by_signal(code: int | None, log_tail: str) -> bool:
    """Whether a job that nobody asked to stop died from a signal (kill -9, the OOM killer): a negative return
    code, a shell's 128+N, or `accelerate launch` (exit 1) reporting in its last lines that its child died so.
    The trainer's own failures exit 1 (training aborted) or 2 (bad input) and are not retried."""
    if code is None or code == 0:
        return False
    if code < 0 or code > 128:
        return True
    return bool(_SIGNAL_DEATH.search("\n".join(log_tail.splitlines()[-15:])))


def _tail_of(log_path: Path) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-ERROR_TAIL_LINES:])


def supervise(
    *,
    engine: Engine,
    run: Run,
    owner: str,
    token: int,
    gpus: Sequence[int] = (),
    lease_s: float = 60,
    poll_s: float = 0.25,
    grace_s: float = 30,
    stop: threading.Event | None = None,
    log_path: Path | None = None,
    database_ok: Callable[[], bool] = lambda: True,
) -> JobOutcome:
    """Run the claimed `run` (held by `owner` with fencing `token`) to its end and record how it ended.
    `database_ok` says whether the database is still the one the run was claimed from (see daemon.py)."""
    assert run.id is not None
    run_id, run_dir = run.id, Path(run.run_dir)
    log_path = log_path or run_dir / rundir.TRAIN_LOG
    env = _job_env(gpus)
    cmd = launch_command(run, gpus=gpus, processes=max(1, len(gpus)))
    taken = _take_dir(engine, run, owner, token, lease_s, poll_s, grace_s)
    if taken is not None:
        return JobOutcome(taken, None, "", 0)
    rewind(engine, run_id, run_dir)
    tail, ingested = MetricsTail(run_dir / rundir.METRICS), 0

    def ingest() -> None:
        nonlocal ingested
        lines = tail.read()
        if lines:
            ingested += store.ingest_metric_lines(engine=engine, run_id=run_id, lines=lines)
            mlflow_sync.nudge()

    with open(log_path, "ab") as log:
        proc = _spawn_job(cmd, log, env)
    watch = _JobWatch(engine, run_id, owner, token, lease_s, poll_s, grace_s, stop, ingest, database_ok)
    if not watch.follow(proc):
        return JobOutcome("fenced", proc.returncode, "", ingested, tail.malformed, proc.pid)
    code = proc.returncode
    if watch.db_problem is not None:  # stopped with a checkpoint; the lease expires and the run is re-queued
        return JobOutcome("abandoned", code, watch.db_problem, ingested, tail.malformed, proc.pid)
    last_lines = "\n".join(_tail_of(log_path).splitlines()[-5:])  # through `accelerate launch`: exit 1
    if code == rundir.EXIT_BUSY or (code != 0 and "is in use by another trainer" in last_lines):
        recorded = store.finish_run(  # not this worker's turn: another trainer still owns the directory
            engine=engine,
            run_id=run_id,
            owner=owner,
            token=token,
            status="queued",
            exit_code=code,
            error_tail=last_lines,
        )
        return JobOutcome("queued" if recorded else "fenced", code, "", ingested, tail.malformed, proc.pid)
    if code == 0 and watch.stopping is None:  # the recipe's evaluations, after training
        held, code = _evaluate(engine, run, log_path, env, watch)
        if not held:
            return JobOutcome("fenced", code, "", ingested, tail.malformed, proc.pid)
    outcome, error_tail = _record_end(engine, run_id, owner, token, code, watch.stopping, log_path)
    return JobOutcome(outcome, code, error_tail, ingested, tail.malformed, proc.pid)


def _job_env(gpus: Sequence[int]) -> dict[str, str]:
    """The environment of a job's processes: its GPUs, unbuffered output (train.log, the Log tab, line by line as
    it happens), no MLflow of the trainer's own (the worker forwards the stored metrics: mlflow_sync) and this
    process's identity, without which the trainer checkpoints and exits."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)), HF_HUB_DISABLE_PROGRESS_BARS="1")
    env["PYTHONUNBUFFERED"] = "1"
    env["WMTP_TRAINER_MLFLOW"] = "off"
    env[SUPERVISOR_ENV] = supervisor_identity()
    return env


def _evaluate(
    engine: Engine, run: Run, log_path: Path, env: dict[str, str], watch: _JobWatch
) -> tuple[bool, int | None]:
    """Run the recipe's evaluations one after the other, recording each one's results: whether the lease still
    held (False: fenced) and the exit code, 0 once every evaluation is recorded, else the first that stopped."""
    assert run.id is not None
    recipe = recipe_from_json(run.recipe_json, f"run {run.id}")
    for i, benchmark in enumerate(recipe.eval.benchmarks):
        out = eval_dir(Path(run.run_dir), i, benchmark)
        with open(log_path, "ab") as log:
            ev = _spawn_job(eval_command(run, benchmark, out), log, env)
        if not watch.follow(ev):
            return False, ev.returncode
        if watch.stopping is not None or ev.returncode != 0:
            return True, ev.returncode
        store.record_results(engine=engine, run_id=run.id, results=read_results(out), samples=out / SAMPLES)
    return True, 0


def _record_end(
    engine: Engine,
    run_id: int,
    owner: str,
    token: int,
    code: int | None,
    stopping: RunStatus | None,
    log_path: Path,
) -> tuple[str, str]:
    """Record how the job ended: the outcome (its status, or fenced when the lease was lost meanwhile) and the
    log tail stored with a failure. A crash (killed by a signal) is re-queued to resume from its checkpoint."""
    status: RunStatus
    if code == 0 and stopping is None:
        status, error_tail = "succeeded", ""
    elif stopping is not None:
        status, error_tail = stopping, ""
    else:
        status, error_tail = "failed", _tail_of(log_path)
    if status == "failed" and killed_by_signal(code, error_tail):
        crashed = store.requeue_crashed_run(
            engine=engine,
            run_id=run_id,
            owner=owner,
            token=token,
            exit_code=code,
            error_tail=error_tail or None,
        )
        return crashed or "fenced", error_tail
    recorded = store.finish_run(
        engine=engine,
        run_id=run_id,
        owner=owner,
        token=token,
        status=status,
        exit_code=code,
        error_tail=error_tail or None,
    )
    mlflow_sync.nudge()  # the final status and evaluations
    return status if recorded else "fenced", error_tail


def _take_dir(
    engine: Engine, run: Run, owner: str, token: int, lease_s: float, poll_s: float, grace_s: float
) -> str | None:
    """Wait (renewing the lease) until no trainer holds the run directory, then check its identity stamp.
    None when the run may start; otherwise how it ended: fenced, queued (still taken: handed back) or failed
    (the directory belongs to another run)."""
    assert run.id is not None
    run_dir, deadline = Path(run.run_dir), time.monotonic() + grace_s + 30
    while not rundir.wait_until_free(run_dir, timeout_s=min(lease_s / 3, 5.0)):
        if not store.renew_lease(engine=engine, run_id=run.id, owner=owner, token=token, lease_s=lease_s):
            return "fenced"
        if time.monotonic() >= deadline:
            message = f"run directory {run_dir} is still in use by another trainer: handed back"
            store.finish_run(
                engine=engine, run_id=run.id, owner=owner, token=token, status="queued", error_tail=message
            )
            return "queued"
        time.sleep(poll_s)
    stamp = rundir.read_stamp(run_dir)
    if stamp is None and run_dir.is_dir():  # made before directories were stamped
        rundir.write_stamp(run_dir, rundir.RunStamp(uid=run.uid, recipe_sha256=run.recipe_sha256))
    elif stamp is not None and stamp.uid != run.uid:
        message = (
            f"run directory {run_dir} is stamped for run {stamp.uid}, not this run {run.uid} "
            "(another studio database's run?): refusing to train in it; move it away and retry"
        )
        ok = store.finish_run(
            engine=engine,
            run_id=run.id,
            owner=owner,
            token=token,
            status="failed",
            exit_code=2,
            error_tail=message,
        )
        return "failed" if ok else "fenced"
    return None


def _spawn_job(cmd: list[str], log: Any, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A job process in its own session (so its whole tree can be signalled and found), output to the log."""
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
    )


class _JobWatch:
    """Follows one job process: ingests metrics, renews the lease (fenced), turns cancel/stop into SIGTERM then,
    after the grace period, SIGKILL of the group. `stopping` says why we stopped it ("cancelled" or "queued")."""

    def __init__(
        self,
        engine: Engine,
        run_id: int,
        owner: str,
        token: int,
        lease_s: float,
        poll_s: float,
        grace_s: float,
        stop: threading.Event | None,
        ingest: Callable[[], None],
        database_ok: Callable[[], bool],
    ) -> None:
        self.engine, self.run_id, self.owner, self.token = engine, run_id, owner, token
        self.lease_s, self.poll_s, self.grace_s, self.stop, self.ingest = (
            lease_s,
            poll_s,
            grace_s,
            stop,
            ingest,
        )
        self.database_ok = database_ok
        self.stopping: RunStatus | None = None
        self.next_renew = 0.0
        self.db_problem: str | None = None
        """Why the database can no longer be written (then nothing more is read from or written to it)."""

    def follow(self, proc: subprocess.Popen[bytes]) -> bool:
        """Until `proc` ends; False when fenced (another worker owns the run: the process is killed)."""
        self.kill_at = 0.0
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if self.db_problem is None and not self.database_ok():
                    self.db_problem = (
                        f"the studio database {self.engine.url.database} was deleted or replaced"
                    )
                if self.db_problem is None:
                    try:
                        if not self._tend(proc, now):
                            kill_session(proc)
                            return False
                    except SQLAlchemyError as exc:
                        self.db_problem = str(store.database_error(self.engine.url, exc))
                if self.db_problem is not None and self.stopping is None:
                    self._stop_job(proc, "queued", now)
                if self.stopping is not None and now >= self.kill_at:
                    _signal_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self.poll_s)
            kill_session(proc)  # stragglers of a finished process (e.g. accelerate's children)
            if self.db_problem is None:
                self.ingest()
        finally:
            if proc.returncode is None:
                kill_session(proc)
        return True

    def _stop_job(self, proc: subprocess.Popen[bytes], why: RunStatus, now: float) -> None:
        self.stopping, self.kill_at = why, now + self.grace_s
        _signal_group(proc.pid, signal.SIGTERM)

    def _tend(self, proc: subprocess.Popen[bytes], now: float) -> bool:
        """One poll's database work: ingest, renew the lease (False: fenced), turn cancel/stop into SIGTERM."""
        self.ingest()
        if now >= self.next_renew:
            if not store.renew_lease(
                engine=self.engine,
                run_id=self.run_id,
                owner=self.owner,
                token=self.token,
                lease_s=self.lease_s,
            ):
                return False
            self.next_renew = now + self.lease_s / 3
        if self.stopping is None:
            current = store.get_run(engine=self.engine, run_id=self.run_id)
            if current is not None and current.cancel_requested:
                self._stop_job(proc, "cancelled", now)
            elif self.stop is not None and self.stop.is_set():
                self._stop_job(proc, "queued", now)
        return True


def eval_command(run: Run, benchmark: str, out: Path) -> list[str]:
    """The evaluator on one of the run's recipe's benchmarks (it reads the recipe's settings itself)."""
    evaluate = ["-m", "wmtp_studio.evaluate", "--run-dir", run.run_dir]
    return [sys.executable, *evaluate, "--benchmark", benchmark, "--out", str(out)]
