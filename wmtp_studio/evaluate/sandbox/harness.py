"""Run untrusted programs (a model's completion followed by its tests) and judge them from evidence they cannot forge.

Threat model. The program is hostile: it may loop, exhaust memory, processes, files or output, signal anything it
can reach, read secrets or files, use the network, tamper with its interpreter (built-ins, ``__eq__``, ``sys.exit``,
trace hooks, frame walking, ``gc``, ctypes), exit early with status 0, or leave processes behind. The harness (this
module, in the caller's process) never executes it, and decides the verdict itself.

Verdict. Before the run, ``verdict.make_plan`` rewrites every test assert so that the program only *reports*
the values of the sub-expressions the harness cannot compute (calls into the program, its variables); comparison
and expected literal stay here. ``assert f(2) == 4`` runs in the child as ``__wmtp_probe(0, lambda: (f(2)))``; the
child reports ``f(2)`` as tagged plain data, ``judge`` rebuilds it with fresh built-in types and evaluates
``value == 4`` with the real built-ins, stopping the run at the first assert that fails. A program passes only if
every reported assert held, every assert that runs whenever its scope does (not under if/try) was reported, and it
exited 0 after its last statement (a completion line carrying a per-run nonce). Tampering inside the child changes
what is reported, never what it is compared with: the expected values never enter the candidate's process, so
forged ``__eq__``, patched built-ins, frame walking, ``gc`` searches and early exits cannot pass an assert whose
expected value is a literal. ``Result.verified`` says whether every assert was of that kind: ``assert f(x) == y``
with ``y`` computed by the program, or a bare ``assert f(x)``, is judged the same way but the child could lie about
it, as it could about a program without asserts. The nonce only defeats blind forgeries (it is in the child's memory).

Judging agrees with the official harnesses on legitimate code (METHOD.md, "Evaluation"): only the benchmark's own
test code is rewritten (`tests_from`), so a test function the completion defines but never calls does not run;
function-benchmark programs run as module ``candidate``, not ``__main__``; output past the cap is read and dropped
(recorded in ``Result.output_truncated``), never a failure; Fraction and Decimal, like subclasses of the built-in
types, are reported as plain data and rebuilt here. A failed run says why: the assert's line with its expected and
reported values, the exception, the limit it hit (``Result.line``, ``expected``, ``got``, ``exception``, ``detail``).

Isolation (``Tier``, recorded in every ``Result``; the process tree is described in ``launch``):
  PROCESS    own process (a fork of a pristine zygote interpreter, never of the harness), new session, rlimits
             (address space, CPU, file size, open files, processes), temp dir cwd, stdin /dev/null, scrubbed env,
             no_new_privs, seccomp (no IPv4/IPv6 socket, no io_uring, no kill() of a group or -1). It runs as the
             harness's uid, so it can read the harness's files and signal or ptrace the harness by pid: this tier
             stops accidents, not a targeted attack.
  UID        + a dedicated uid/gid per slot (root only): it cannot touch the harness, its files or other slots;
             kill(-1) as that uid ends everything it spawned; RLIMIT_NPROC caps fork bombs; what it leaves in /tmp,
             /var/tmp and /dev/shm is removed. It can still read world-readable files (a benchmark's own test data
             among them, which would let it pass), reach unix sockets and leave System V IPC objects.
  NAMESPACE  + an empty network namespace, and per run new pid, mount and IPC namespaces, chrooted into a read-only
             tree of system binaries and libraries and this interpreter: no network, no project or dataset file, a
             /proc showing only its own processes, private tmpfs /tmp, /var/tmp and /dev/shm; when the run ends its
             pid 1 exits and the kernel kills whatever is left. Without namespaces seccomp is the network barrier.
"""

from __future__ import annotations

import json
import math
import os
import queue
import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.sandbox.host import DEFAULT_UID_BASE, Zygote, claim_uids, host
from wmtp_studio.evaluate.sandbox.result import Limits, Result, Tier, detect_tier
from wmtp_studio.evaluate.sandbox.verdict import Plan, make_plan
from wmtp_studio.evaluate.sandbox.watch import SandboxWatch

_PLAN_LOCK = threading.Lock()  # run_many plans programs from several threads


class Sandbox:
    """Runs programs in isolated processes, `slots` at a time; thread-safe; close() (or `with`) when done."""

    def __init__(
        self,
        *,
        tier: Tier | None = None,
        require_tier: Tier | None = None,
        slots: int | None = None,
        limits: Limits = Limits(),  # noqa: B008 (frozen: ruff sees that only within result.py)
        uid_base: int = DEFAULT_UID_BASE,
    ) -> None:
        found, best = host(), detect_tier()
        self.tier = best if tier is None else Tier(tier)
        if self.tier > best:
            raise StudioError(
                f"tier {self.tier.name} is not available: this host provides {best.name} ({found.reason})"
            )
        if require_tier is not None and self.tier < require_tier:
            why = f"tier {self.tier.name} was asked for" if self.tier < best else found.reason
            raise StudioError(
                f"refusing to run below tier {Tier(require_tier).name}; this host provides {best.name} ({why})"
            )
        self.limits = limits
        self.slots = slots or len(os.sched_getaffinity(0))  # one program per CPU this process may use
        self._python = found.python if self.tier >= Tier.UID else sys.executable
        uids, self._locks = claim_uids(uid_base, self.slots) if self.tier >= Tier.UID else ([], [])
        self.uids = tuple(uids)  # one per slot, used by no one else while this Sandbox is open
        if self.tier >= Tier.UID and len(uids) < self.slots:
            raise StudioError(
                f"found only {len(uids)} free sandbox uids from {uid_base} for {self.slots} slots"
            )
        self._free: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        for slot in range(self.slots):
            self._free.put(uids[slot] if uids else None)
        self._zygote: Zygote | None = None
        self._zygote_lock = threading.Lock()
        self._closed = False

    def run(
        self,
        program: str,
        *,
        test_timeout_s: float | None = None,
        stdin: str | None = None,
        entry_points: Collection[str] = (),
        tests_from: int = 0,
        as_main: bool | None = None,
    ) -> Result:
        """Run one program (candidate code followed by its tests) and judge it; `stdin` is its input (default none).

        `entry_points`: the names the tests exercise, which the program may define even if they shadow built-ins.
        `tests_from`: where the benchmark's test code starts (a line start); only it is instrumented (0: all).
        `as_main`: run as `__main__` (default: only when given `stdin`, i.e. a stdio program; function benchmarks
        run under another name, as in the official harnesses, so `if __name__ == "__main__":` blocks are skipped).
        """
        try:
            # CPython 3.11's ast is not thread-safe ("AST constructor recursion depth mismatch").
            with _PLAN_LOCK:
                plan = make_plan(program, entry_points, tests_from)
        except (SyntaxError, RecursionError, MemoryError) as exc:  # Python could not compile it either
            return Result(
                False, "error", None, 0.0, "", f"{type(exc).__name__}: {exc}", self.tier, "does not compile",
                exception=f"{type(exc).__name__}: {exc}",
            )  # fmt: skip
        except ValueError as exc:  # a null byte, or a completion that swallows the test code
            return Result(False, "error", None, 0.0, "", f"ValueError: {exc}", self.tier, str(exc))
        main = stdin is not None if as_main is None else as_main
        uid = self._free.get()
        try:
            return self._execute(plan, uid, test_timeout_s, stdin, main)
        finally:
            self._free.put(uid)

    def run_many(
        self,
        programs: Sequence[str],
        *,
        test_timeout_s: float | None = None,
        entry_points: Sequence[Collection[str]] | None = None,
        tests_from: Sequence[int] | None = None,
        on_result: Callable[[int, Result], None] | None = None,
    ) -> list[Result]:
        """Run programs `slots` at a time, each slot taking the next program the moment its last one ends (no
        batches: a program that times out holds one slot, never a group); results in the order of `programs`.

        Per program: `entry_points` and `tests_from` (see `run`). `on_result(i, result)` is called as each ends.
        """
        names = entry_points if entry_points is not None else [()] * len(programs)
        starts = tests_from if tests_from is not None else [0] * len(programs)
        if len(names) != len(programs) or len(starts) != len(programs):
            raise ValueError("entry_points and tests_from must have one entry per program")
        results: list[Result | None] = [None] * len(programs)
        pending = iter(range(len(programs)))
        lock = threading.Lock()

        failed = (
            threading.Event()
        )  # one slot raised (e.g. the sandbox was closed): the others stop taking work

        def slot() -> None:
            while not failed.is_set():
                with lock:
                    i = next(pending, None)
                if i is None:
                    return
                try:
                    result = self.run(
                        programs[i],
                        test_timeout_s=test_timeout_s,
                        entry_points=names[i],
                        tests_from=starts[i],
                    )
                except BaseException:
                    failed.set()
                    raise
                results[i] = result
                if on_result is not None:
                    with lock:
                        on_result(i, result)

        with ThreadPoolExecutor(max_workers=self.slots) as pool:
            for future in [pool.submit(slot) for _ in range(min(self.slots, len(programs)))]:
                future.result()
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Stop the zygote and release the uids (runs still in flight are cancelled)."""
        with self._zygote_lock:
            self._closed = True
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None
        for fd in self._locks:
            os.close(fd)
        self._locks = []

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _submit(self, config: bytes, fds: list[int]) -> None:
        with self._zygote_lock:
            if self._closed:
                raise StudioError("this sandbox is closed")
            for attempt in (1, 2):
                if self._zygote is None:
                    self._zygote = Zygote(self._python, int(self.tier))
                try:
                    return self._zygote.submit(config, fds)
                except OSError:
                    self._zygote.close()  # it died; start another once
                    self._zygote = None
                    if attempt == 2:
                        raise StudioError("the sandbox zygote process keeps dying") from None

    def _execute(
        self, plan: Plan, uid: int | None, test_timeout_s: float | None, stdin: str | None, main: bool
    ) -> Result:
        limits = self.limits
        nonce = secrets.token_hex(16)
        holder = workdir = None
        if self.tier < Tier.NAMESPACE:  # tier 3 makes its own in a private tmpfs
            holder = tempfile.mkdtemp(prefix="wmtp-sandbox-")
            os.chmod(holder, 0o711)  # ours (not the run's), so the run cannot rename its workdir away
            workdir = os.path.join(holder, "work")
            os.mkdir(workdir, 0o700)
            if uid is not None:
                os.chown(workdir, uid, uid)
        config = {
            "program": plan.source,
            "module": "__main__" if main else "candidate",
            "stdin": stdin,
            "nonce": nonce,
            "tier": int(self.tier),
            "uid": uid,
            "gid": uid,
            "workdir": workdir,
            "memory_mb": limits.memory_mb,
            "max_file_mb": limits.max_file_mb,
            "max_procs": limits.max_procs,
            "cpu_s": limits.cpu_s or math.ceil(limits.timeout_s) + 1,
            "tmpfs_mb": max(4 * limits.max_file_mb, 64),
        }
        watch = SandboxWatch(plan, limits, nonce, test_timeout_s)
        try:
            return watch.run(self._submit, json.dumps(config).encode(), self.tier)
        finally:
            if holder is not None:
                shutil.rmtree(holder, ignore_errors=True)
