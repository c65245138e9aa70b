"""`wmtp-worker`: the daemon of one host. Registers itself, heartbeats, and runs up to `--slots` jobs at once.

Design (DESIGN.md hops 3-6): the loop in the main thread fills free slots by claiming runs from the store
(`claim_next_run`, by priority, when the run's GPUs fit in the free ones) and supervises each claimed run in its
own thread. It wakes up on Huey `run_job` tasks (a Huey consumer runs in-process, one thread, with short polling)
and also polls the store every `--poll-s`, so a lost Huey message delays nothing for long. It reaps expired
leases of dead workers on start and periodically (and announces re-queued runs on Huey). SIGTERM or SIGINT:
running jobs checkpoint and go back to the queue (`supervise` does it), the worker unregisters and exits 0.

A database the worker can no longer trust stops it with exit 2 and a message naming the file and the cause: a
SQLite file deleted or replaced under it (its device/inode changed: a reset studio must not inherit this worker's
runs), a full or read-only disk, a corrupted file. Running jobs then stop with a checkpoint; their leases expire
in the database they came from and the reaper re-queues them there.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from wmtp_studio import __version__, store
from wmtp_studio.errors import StudioError
from wmtp_studio.models import Run
from wmtp_studio.settings import Settings
from wmtp_studio.taskqueue import announce
from wmtp_studio.workers import mlflow_sync
from wmtp_studio.workers.supervise import supervise

if TYPE_CHECKING:
    from huey import Huey
    from huey.consumer import Consumer

log = logging.getLogger("wmtp_worker")


GPU_QUERY = "index,memory.used,memory.total,utilization.gpu"
GPU_FIELDS = ("index", "memory_used_mib", "memory_total_mib", "utilization_pct")


def parse_gpu_stats(csv: str, gpus: list[int]) -> list[dict[str, int]]:
    """Rows of `nvidia-smi --query-gpu=GPU_QUERY --format=csv,noheader,nounits` for the GPUs in `gpus`
    (a field nvidia-smi cannot read, e.g. `[N/A]`, is left out)."""
    stats = []
    for line in csv.splitlines():
        values = zip(GPU_FIELDS, line.split(","), strict=False)
        row = {k: int(float(v)) for k, v in values if v.strip().replace(".", "", 1).isdigit()}
        if row.get("index") in gpus:
            stats.append(row)
    return stats


def read_gpu_stats(gpus: list[int]) -> list[dict[str, int]] | None:
    """Memory and utilisation of `gpus` now, or None when there are none or nvidia-smi cannot tell."""
    if not gpus:
        return None
    cmd = ["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_gpu_stats(out.stdout, gpus)


def detect_gpus() -> list[int]:
    """GPU indices from `nvidia-smi -L` (none if it is missing or fails)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [i for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


class WorkerDaemon:
    """Slots, free GPUs and the job threads of one daemon; `fill` claims runs until slots or GPUs run out."""

    def __init__(
        self, *, engine: Engine, worker_id: str, gpus: list[int], slots: int, lease_s: float
    ) -> None:
        self.engine, self.worker_id, self.slots, self.lease_s = engine, worker_id, slots, lease_s
        self.gpus, self.free_gpus = list(gpus), list(gpus)
        self.jobs: dict[int, threading.Thread] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.db_identity = store.file_identity(engine.url)
        self.fatal: str | None = None
        """Why the worker stopped on its own (the database failed or was replaced): it exits 2."""

    def database_ok(self) -> bool:
        """The SQLite file is still the one this worker started with (other databases: always)."""
        return store.file_identity(self.engine.url) == self.db_identity

    def fill(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                if len(self.jobs) >= self.slots:
                    return
                run = store.claim_next_run(
                    engine=self.engine,
                    owner=self.worker_id,
                    gpus_free=len(self.free_gpus),
                    lease_s=self.lease_s,
                )
                if run is None or run.id is None:
                    return
                gpus, self.free_gpus = (
                    self.free_gpus[: run.gpus_requested],
                    self.free_gpus[run.gpus_requested :],
                )
                thread = threading.Thread(target=self._job, args=(run, gpus), name=f"run-{run.id}")
                self.jobs[run.id] = thread
            log.info("claimed run %s (attempt %s, gpus %s)", run.id, run.attempts, gpus or "none")
            thread.start()

    def _job(self, run: Run, gpus: list[int]) -> None:
        assert run.id is not None
        try:
            outcome = supervise(
                engine=self.engine,
                run=run,
                owner=self.worker_id,
                token=run.fencing_token,
                gpus=gpus,
                lease_s=self.lease_s,
                stop=self.stop,
                database_ok=self.database_ok,
            )
            log.info("run %s ended: %s (exit code %s)", run.id, outcome.status, outcome.exit_code)
            if outcome.status == "abandoned":
                log.error("run %s stopped with a checkpoint: %s", run.id, outcome.error_tail)
            if outcome.status == "queued":  # handed back or crashed: any worker may resume it
                announce([run.id])
        except SQLAlchemyError as exc:  # the lease expires and the reaper re-queues the run
            log.error("supervising run %s: %s", run.id, store.database_error(self.engine.url, exc))
            self.fatal = self.fatal or str(store.database_error(self.engine.url, exc))
            self.stop.set()
        except (
            Exception
        ):  # a job thread is a process edge: report; the lease expires and the reaper re-queues
            log.exception("supervising run %s failed", run.id)
        finally:
            with self.lock:
                del self.jobs[run.id]
                self.free_gpus = sorted(self.free_gpus + gpus)
            self.wake.set()

    def running(self) -> list[int]:
        with self.lock:
            return sorted(self.jobs)

    def join(self) -> None:
        with self.lock:
            threads = list(self.jobs.values())
        for thread in threads:
            thread.join()


def reap(engine: Engine) -> None:
    requeued = store.requeue_expired_leases(engine=engine)
    if requeued:
        log.info("re-queued runs with expired leases: %s", requeued)
        announce(requeued)
    forgotten = store.forget_dead_workers(engine=engine)
    if forgotten:
        log.info("forgot workers silent for %.0f s: %s", store.WORKER_FORGET_AFTER_S, forgotten)


def register(worker: WorkerDaemon) -> None:
    store.register_worker(
        engine=worker.engine,
        worker_id=worker.worker_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        slots=[f"gpu{g}" for g in worker.gpus] or ["cpu"] * worker.slots,
        version=__version__,
    )


def beat(worker: WorkerDaemon) -> None:
    """Heartbeat with the runs held and the GPUs' state; a worker whose row was forgotten registers again."""
    alive = store.heartbeat(
        engine=worker.engine,
        worker_id=worker.worker_id,
        current_run_ids=worker.running(),
        gpu_stats=read_gpu_stats(worker.gpus),
    )
    if not alive:
        log.warning("worker %s was not registered (forgotten as dead?): registering again", worker.worker_id)
        register(worker)


def serve(
    worker: WorkerDaemon, *, poll_s: float, heartbeat_s: float, reap_s: float, parent_pid: int | None = None
) -> None:
    """The main loop: claim, heartbeat, reap, then sleep until a wake-up or the next deadline. With
    `parent_pid`, stop (as on SIGTERM) once that process is gone: we were re-parented."""
    next_beat = next_reap = 0.0
    while not worker.stop.is_set():
        if parent_pid is not None and os.getppid() != parent_pid:
            log.info("parent process %s is gone: checkpointing running jobs and shutting down", parent_pid)
            worker.stop.set()
            break
        if not worker.database_ok():
            path = store.database_file(worker.engine.url)
            raise StudioError(
                f"the studio database {path} was deleted or replaced while this worker ran: claiming nothing "
                "more; running jobs stop with a checkpoint (restart the worker to serve the new database)"
            )
        worker.wake.clear()
        try:
            worker.fill()
            now = time.monotonic()
            if now >= next_beat:
                beat(worker)
                next_beat = now + heartbeat_s
            if now >= next_reap:
                reap(worker.engine)
                next_reap = now + reap_s
        except SQLAlchemyError as exc:
            raise store.database_error(worker.engine.url, exc) from None
        worker.wake.wait(timeout=max(0.0, min(poll_s, next_beat - now, next_reap - now)))


def gpu_list(cpu: bool, gpus: str | None) -> list[int]:
    """The GPUs to offer: none with --cpu, the --gpus indices, or every GPU nvidia-smi lists."""
    if cpu and gpus:
        raise typer.BadParameter("--cpu and --gpus exclude each other")
    if cpu:
        return []
    if gpus is None:
        return detect_gpus()
    try:
        return [int(g) for g in gpus.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--gpus must be comma-separated integers, not {gpus!r}") from None


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def main(argv: list[str] | None = None) -> None:
    """The `wmtp-worker` console script (`argv`: the arguments, default the command line's)."""
    app(args=argv, prog_name="wmtp-worker")


def _consume(huey: Huey, worker: WorkerDaemon) -> Consumer:
    """Start Huey's consumer (its wake-ups set `worker.wake`), then put in its place signal handlers that stop the
    worker gracefully: SIGTERM and SIGINT checkpoint the running jobs and shut down."""
    consumer = huey.create_consumer(
        workers=1,
        periodic=False,
        initial_delay=0.05,
        max_delay=0.5,
        check_worker_health=False,
        shutdown_timeout=5,
    )
    consumer.start()  # installs Huey's signal handlers; ours replace them below

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: checkpointing running jobs and shutting down", signal.Signals(signum).name)
        worker.stop.set()
        worker.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return consumer


@app.command()
def run_worker(
    cpu: Annotated[bool, typer.Option("--cpu", help="Offer no GPU (CPU jobs only).")] = False,
    gpus: Annotated[
        str | None, typer.Option(help="GPU indices to use, e.g. 0,1 (default: auto-detect).")
    ] = None,
    slots: Annotated[int | None, typer.Option(help="Jobs at once (default: 1 per GPU, or 1 on CPU).")] = None,
    lease_s: Annotated[
        float, typer.Option("--lease-s", help="Lease of a claimed run, renewed while it runs.")
    ] = 60.0,
    poll_s: Annotated[
        float, typer.Option("--poll-s", help="Poll the store this often besides Huey wake-ups.")
    ] = 2.0,
    exit_with_parent: Annotated[
        bool,
        typer.Option(
            "--exit-with-parent",
            help="Shut down gracefully when the process that started this worker exits (embedded workers).",
        ),
    ] = False,
) -> None:
    """Run queued WMTP Studio jobs on this host."""
    gpu_ids = gpu_list(cpu, gpus)
    slots = max(1, len(gpu_ids)) if slots is None else slots
    if slots < 1 or lease_s <= 0 or poll_s <= 0:
        raise typer.BadParameter("--slots, --lease-s and --poll-s must be positive")
    parent_pid = os.getppid()  # now: the parent may be gone by the time the loop starts (it was, under load)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    try:
        engine = store.make_engine(settings.database_url)
        store.upgrade(engine=engine)
        worker_id = f"{socket.gethostname()}:{os.getpid()}"
        worker = WorkerDaemon(engine=engine, worker_id=worker_id, gpus=gpu_ids, slots=slots, lease_s=lease_s)
        register(worker)
        from wmtp_studio.workers import tasks  # the queue opens on import (a read-only home fails here)
        from wmtp_studio.workers.queue import huey
    except SQLAlchemyError as exc:
        log.error("%s", store.database_error(settings.database_url, exc))
        raise typer.Exit(2) from None
    except StudioError as exc:
        log.error("%s", exc)
        raise typer.Exit(2) from None
    tasks.on_wake(lambda _run_id: worker.wake.set())
    forwarder = mlflow_sync.Forwarder(engine=engine, uri=settings.mlflow_uri)
    forwarder.start()  # a background thread: MLflow never holds up jobs or leases
    consumer = _consume(huey, worker)
    log.info("worker %s: %s slot(s), gpus %s", worker.worker_id, slots, gpu_ids or "none")
    try:
        serve(
            worker,
            poll_s=poll_s,
            heartbeat_s=min(5.0, lease_s / 3),
            reap_s=min(30.0, lease_s / 2),
            parent_pid=parent_pid if exit_with_parent else None,
        )
    except StudioError as exc:
        log.error("%s", exc)
        worker.fatal = worker.fatal or str(exc)
    finally:
        worker.stop.set()  # also on an unexpected error: jobs go back to the queue
        worker.join()
        consumer.stop(graceful=True)
        forwarder.stop()
        if worker.fatal is None:
            store.unregister_worker(engine=engine, worker_id=worker.worker_id)
        log.info("worker %s stopped", worker.worker_id)
    if worker.fatal is not None:
        raise typer.Exit(2)
