"""How many CPU threads torch may use: as many cores as are free for us, not a fixed number.

On a shared machine a fixed `train.num_threads` oversubscribes the cores and every step slows down (measured: the
quickstart base took 1m45s on an idle 2-core machine and ~11 min with 2 threads while other processes loaded it).
`auto` (the default) takes the cores this process may run on (`os.sched_getaffinity`) minus the load of the
other processes, at least 1 and at most torch's own default (one per physical core).

The load of the others is the smaller of the 1-minute load average and the number of runnable tasks now
(`/proc/loadavg`, sampled for about a second, ourselves excluded): the average alone still counts, for a minute,
the job that ran just before us on the same worker.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("wmtp.train")


@dataclass(frozen=True)
class CpuLoad:
    cpus: int
    """Cores this process may run on."""
    others: float
    """Cores kept busy by other processes (an estimate)."""


def choose_threads(
    setting: int | Literal["auto"] | None, load: CpuLoad, default: int, processes: int = 1
) -> tuple[int, str]:
    """(threads, why) for one of `processes` training processes on this machine: `auto` takes its share of the
    free cores (rounded, at least 1, at most `default`, torch's choice); a number is kept but the reason says when
    it oversubscribes that share; None keeps `default`."""
    free = max(0.0, load.cpus - load.others) / max(1, processes)
    where = f"{free:.1f} of {load.cpus} core(s) free" + (
        f" per process ({processes})" if processes > 1 else ""
    )
    if setting == "auto":
        threads = max(1, min(default, load.cpus, math.floor(free + 0.5)))
        return threads, f"train.num_threads auto: {threads} ({where})"
    threads = default if setting is None else setting
    if threads > max(1.0, free) + 0.5:
        return threads, (
            f"train.num_threads {threads} oversubscribes the CPU ({where}): steps will be slower than they "
            "could be; `auto` adapts to the load"
        )
    return threads, f"train.num_threads {threads} ({where})"


def measure_load(samples: int = 10, interval_s: float = 0.1) -> CpuLoad:
    """This machine's load now, as `choose_threads` takes it (Linux; elsewhere: every core free)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        running = []
        for i in range(samples):
            fields = open("/proc/loadavg").read().split()  # noqa: SIM115 - one short read
            running.append(int(fields[3].split("/")[0]) - 1)  # runnable tasks, less this one
            if i + 1 < samples:
                time.sleep(interval_s)
        load1 = float(fields[0])
    except (OSError, IndexError, ValueError):
        return CpuLoad(cpus, 0.0)
    return CpuLoad(cpus, max(0.0, min(load1, sum(running) / len(running))))


def apply_threads(setting: int | Literal["auto"] | None) -> int:
    """Set torch's intra-op threads for this run and log why; returns the number."""
    import torch

    default = torch.get_num_threads()
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by accelerate/torchrun for each rank
    threads, why = choose_threads(setting, measure_load(), default, processes)
    (log.warning if "oversubscribes" in why else log.info)(why)
    torch.set_num_threads(threads)
    return threads
