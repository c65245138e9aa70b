"""What callers of the sandbox choose and get back: the isolation `Tier`, the `Limits` of one program and the
`Result` of its run (how the harness decides it: harness.py's docstring)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from wmtp_studio.evaluate.sandbox.host import host


class Tier(enum.IntEnum):
    """Isolation strength, ordered: each tier adds to the one below (see harness.py's docstring)."""

    PROCESS = 1
    UID = 2
    NAMESPACE = 3


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program."""

    timeout_s: float = 10.0  # wall clock for the whole program
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    max_output_bytes: int = (
        64_000  # kept per stream (stdout's head, stderr's tail); the rest is read and dropped
    )
    max_procs: int = 64  # processes and threads of the run's uid (RLIMIT_NPROC)
    max_file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    cpu_s: int | None = None  # CPU seconds (RLIMIT_CPU); default ceil(timeout_s) + 1


@dataclass(frozen=True)
class Result:
    """How one program ended. `status` is one of: passed, failed, timeout, oom, error (did not compile)."""

    passed: bool
    status: str
    exit_code: int | None  # negative: killed by that signal; None: never ran, or unknown
    duration_s: float
    stdout: str  # its first Limits.max_output_bytes
    stderr: str  # its last Limits.max_output_bytes
    tier: Tier
    detail: str = ""  # why it did not pass: the first failed assert, the limit it hit, its exit status
    verified: bool = False  # every assert compared the program's output with a literal it never saw
    line: int | None = None  # the failed assert's line in the program
    expected: str = ""  # that assert's expected value (short repr), when it compares with one
    got: str = ""  # what the program's side evaluated to (or each probe's value)
    exception: str = ""  # `Type: message` of the exception that ended it (from its stderr: informative only)
    output_truncated: bool = (
        False  # stdout or stderr went past Limits.max_output_bytes (the rest was dropped)
    )


def detect_tier() -> Tier:
    """The strongest isolation this host provides (probed once per process)."""
    return Tier(host().tier)
