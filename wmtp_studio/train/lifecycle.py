"""A trainer dies with the worker that supervises it (torch-free; the worker imports it too).

Two independent guards, because either alone has holes:
- Linux parent-death signal: the kernel sends SIGTERM to the trainer when its parent dies (the worker, or the
  `accelerate launch` process between them), and SIGTERM means "checkpoint at the next step boundary and exit".
- The supervisor's identity (pid and start time, in WMTP_SUPERVISOR) checked at every step boundary: covers a
  launcher that outlives the worker, and a parent that died before the signal was armed. A recycled pid does not
  fool it (the start time differs).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

SUPERVISOR_ENV = "WMTP_SUPERVISOR"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux only); True if armed."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)


def _start_time(pid: int) -> str | None:
    """Process start time in clock ticks since boot (field 22 of /proc/PID/stat), None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # fields from the 3rd on: state ppid ...
    return fields[19] if fields[0] not in ("Z", "X") else None


def supervisor_identity(pid: int | None = None) -> str:
    """`pid:start_time` of this process (or `pid`): the value of WMTP_SUPERVISOR for the jobs it starts."""
    pid = pid or os.getpid()
    return f"{pid}:{_start_time(pid)}"


def supervisor_gone() -> bool:
    """True when WMTP_SUPERVISOR names a process that no longer exists (dead, or its pid reused)."""
    value = os.environ.get(SUPERVISOR_ENV, "")
    pid, _, start = value.partition(":")
    if not pid.isdigit():
        return False  # not supervised (`wmtp train`)
    return _start_time(int(pid)) != start
