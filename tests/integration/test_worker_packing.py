"""GPU packing by a real `wmtp-worker --gpus 0,1` (fake GPU ids on a CPU machine: every job still goes through
`accelerate launch` with CUDA_VISIBLE_DEVICES set, which is what is observed, in /proc, while it runs).

A run is claimed only when the GPUs it asks for are free on the worker, by priority among the runs that fit;
several runs share the host while they fit, each sees only its own GPUs, and GPUs come back when a run ends."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.integration.conftest import FAST, RECIPES
from tests.integration.jobs import start_worker, stop_worker, visible_devices, wait_for
from wmtp_studio import store
from wmtp_studio.recipe import load_recipe
from wmtp_studio.settings import Settings
from wmtp_studio.submit import submit_run

pytestmark = pytest.mark.slow


def test_runs_are_packed_onto_free_gpus_each_seeing_its_own(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    settings = Settings.from_env(env)
    recipe = load_recipe(RECIPES / "tiny-ntp.yaml", [*FAST, "train.steps=5000"])

    def submit(priority: int, gpus: int) -> Path:
        run = submit_run(engine=engine, settings=settings, recipe=recipe, priority=priority, gpus=gpus)
        return Path(run.run_dir)

    one_a, one_b, two, one_c = submit(5, 1), submit(4, 1), submit(3, 2), submit(0, 1)

    def status(run_dir: Path) -> str:
        run = store.get_run(engine=engine, run_id=int(run_dir.name))
        assert run is not None
        return run.status

    def cancel(*run_dirs: Path) -> None:
        for run_dir in run_dirs:
            store.request_cancel(engine=engine, run_id=int(run_dir.name))
        for run_dir in run_dirs:
            wait_for(lambda d=run_dir: status(d) == "cancelled", 90, f"run {run_dir.name} to stop")  # type: ignore[misc]

    daemon = start_worker(env, tmp_path / "worker.log", "--gpus", "0,1", "--lease-s", "10", "--poll-s", "0.5")
    try:
        # two 1-GPU runs fill both GPUs; the 2-GPU run and the last 1-GPU run wait
        wait_for(lambda: visible_devices(one_a) == {"0"} and visible_devices(one_b) == {"1"}, 90, "packing")
        assert (status(two), status(one_c)) == ("queued", "queued")
        wait_for(lambda: len(store.list_workers(engine=engine)[0].current_run_ids) == 2, 30, "a heartbeat")
        assert store.list_workers(engine=engine)[0].slots == ["gpu0", "gpu1"]

        # one GPU comes back: the 2-GPU run, although ahead in priority, does not fit; the 1-GPU run does
        cancel(one_a)
        wait_for(lambda: visible_devices(one_c) == {"0"}, 90, "the freed GPU to be reused")
        assert status(two) == "queued"

        # both GPUs free: the 2-GPU run gets them together
        cancel(one_b, one_c)
        wait_for(lambda: visible_devices(two) == {"0,1"}, 90, "the 2-GPU run")
        cancel(two)
        wait_for(lambda: store.list_workers(engine=engine)[0].current_run_ids == [], 30, "the slots to empty")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        stop_worker(daemon)
    log = (tmp_path / "worker.log").read_text()
    assert f"claimed run {two.name} (attempt 1, gpus [0, 1])" in log, log
