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

import contextlib
import enum
import fcntl
import functools
import json
import math
import os
import queue
import secrets
import selectors
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.sandbox.host import DEFAULT_UID_BASE, Zygote, claim_uids, host
from wmtp_studio.evaluate.sandbox.judge import decode_report, explain, judge, raised
from wmtp_studio.evaluate.sandbox.verdict import Plan, make_plan

_MAX_REPORT_BYTES = 32 << 20
_PLAN_LOCK = threading.Lock()  # run_many plans programs from several threads
_GRACE_S = 5.0  # how long a cancelled run may take to be cleaned up and reported
_PIPE_BYTES = 1 << 20  # output pipes' capacity and the most read at once
_DRAIN_S = 0.01  # past the cap, output is drained this often: at most ~100 MiB/s of it, at little cost to us


class Tier(enum.IntEnum):
    """Isolation strength, ordered: each tier adds to the one below (see the module docstring)."""

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


class Sandbox:
    """Runs programs in isolated processes, `slots` at a time; thread-safe; close() (or `with`) when done."""

    def __init__(
        self,
        *,
        tier: Tier | None = None,
        require_tier: Tier | None = None,
        slots: int | None = None,
        limits: Limits = Limits(),
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
        watch = _SandboxWatch(plan, limits, nonce, test_timeout_s)
        try:
            return watch.run(self._submit, json.dumps(config).encode(), self.tier)
        finally:
            if holder is not None:
                shutil.rmtree(holder, ignore_errors=True)


class _SandboxWatch:
    """The harness's view of one run: reads its streams and reports, enforces limits, decides the verdict."""

    def __init__(self, plan: Plan, limits: Limits, nonce: str, test_timeout_s: float | None) -> None:
        self.plan, self.limits, self.test_timeout_s = plan, limits, test_timeout_s
        self.done_line = b'{"done":"%s"}' % nonce.encode()
        self.streams = {"out": bytearray(), "err": bytearray()}
        self.truncated = False
        self.failure: tuple[int, str, str, str] | None = (
            None  # (line, expected, got, raised) of a failed assert
        )
        self.report = bytearray()
        self.report_total = 0
        self.seen = [0] * len(plan.sites)
        self.done = self.oom = False
        self.stop: tuple[str, str] | None = None  # (status, detail) of whatever ended the run early
        self.status = bytearray()
        self.test_deadline = math.inf

    def run(self, submit: Callable[[bytes, list[int]], None], config: bytes, tier: Tier) -> Result:
        names = ("out", "err", "report", "status")
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(5)]
        for _, w in pipes[:2]:  # output floods: fewer, larger reads (the kernel may refuse: keep its default)
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        cancel_w = pipes[4][1]
        theirs = [pipes[0][1], pipes[1][1], pipes[2][1], pipes[3][1], pipes[4][0]]
        start = time.monotonic()
        try:
            submit(config, theirs)
        except BaseException:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            raise
        for fd in theirs:
            os.close(fd)
        selector = selectors.DefaultSelector()
        for name, (r, _) in zip(names, pipes, strict=False):
            selector.register(r, selectors.EVENT_READ, name)
        deadline = start + self.limits.timeout_s
        if self.test_timeout_s is not None:
            self.test_deadline = start + self.test_timeout_s
        give_up = math.inf
        paused: dict[
            int, tuple[str, float]
        ] = {}  # output past the cap is drained every _DRAIN_S, not as it comes
        while selector.get_map() or paused:
            now = time.monotonic()
            for fd, (name, when) in list(paused.items()):
                if now >= when:
                    selector.register(fd, selectors.EVENT_READ, name)
                    del paused[fd]
            if self.stop is None and now >= min(deadline, self.test_deadline):
                which = "program" if now >= deadline else "test"
                limit = self.limits.timeout_s if now >= deadline else self.test_timeout_s
                self.stop = ("timeout", f"{which} ran past {limit} s")
            if self.stop is not None and cancel_w >= 0:
                os.close(cancel_w)  # the launcher kills the run, cleans up and reports
                cancel_w, give_up = -1, now + _GRACE_S
            if now >= give_up:
                break
            wait = min(deadline, self.test_deadline, give_up) - now if self.stop is None else give_up - now
            wait = min([wait, *(when - now for _, when in paused.values())])
            for key, _ in selector.select(max(wait, 0.0)):
                full = (
                    key.data in ("out", "err") and len(self.streams[key.data]) >= self.limits.max_output_bytes
                )
                if (
                    full and key.data == "out"
                ):  # its head is kept: the rest goes to /dev/null, never through us
                    more = os.splice(key.fd, _devnull(), _PIPE_BYTES) > 0
                    self.truncated |= more
                else:
                    data = os.read(key.fd, _PIPE_BYTES)
                    more = bool(data)
                    if more:
                        self._feed(key.data, data)
                if not more:
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    if key.data == "status":
                        give_up = min(give_up, time.monotonic() + 1.0)  # stragglers hold a pipe: stop reading
                elif full:  # a flood: let the pipe fill for a while (the program waits on it, not us on it)
                    selector.unregister(key.fd)
                    paused[key.fd] = (key.data, time.monotonic() + _DRAIN_S)
        for key in list(selector.get_map().values()):
            os.close(key.fd)
        for fd in paused:
            os.close(fd)
        selector.close()
        if cancel_w >= 0:
            os.close(cancel_w)
        return self._result(time.monotonic() - start, tier)

    def _feed(self, name: str, data: bytes) -> None:
        if name == "status":
            self.status += data
        elif name == "report":
            if self.stop is not None:
                return
            self.report_total += len(data)
            if self.report_total > _MAX_REPORT_BYTES:
                self._halt("failed", "report channel over its size limit")
                return
            self.report += data
            if b"\n" in data:  # split only when a line ended, so a long line costs linear time
                *lines, rest = self.report.split(b"\n")
                self.report = bytearray(rest)
                for line in lines:
                    self._on_report(bytes(line))
        else:  # past the cap, output is read and dropped (stdout keeps its head, stderr its tail): not a failure
            kept, cap = self.streams[name], self.limits.max_output_bytes
            if len(kept) + len(data) > cap:
                self.truncated = True
            if name == "out":
                kept += data[: max(cap - len(kept), 0)]
            else:
                kept += data
                del kept[: max(len(kept) - cap, 0)]

    def _on_report(self, line: bytes) -> None:
        if self.stop is not None:
            return
        if line == self.done_line:
            self.done = True
        elif line == b'{"oom":1}':
            self.oom = True
        elif line.startswith(
            b'{"setup":"'
        ):  # the launch failed before the program ran (or the program says so)
            try:
                text = bytes.fromhex(line[10:-2].decode("ascii")).decode("utf-8", "replace").strip()
            except ValueError:
                text = "(unreadable)"
            self._halt("error", "sandbox setup failed: " + (text.splitlines() or [""])[-1])
        else:
            try:
                index, values = decode_report(line, self.plan.sites)
            except ValueError:
                self._halt("failed", "malformed report from the program")
                return
            site = self.plan.sites[index]
            failure = judge(site, values)
            if failure is not None and self.stop is None:
                self.failure = (site.line, *explain(site, values), raised(values))
                self._halt("failed", failure)
            self.seen[index] += 1
            if self.test_timeout_s is not None:
                self.test_deadline = time.monotonic() + self.test_timeout_s

    def _halt(self, status: str, detail: str) -> None:
        if self.stop is None:
            self.stop = (status, detail)

    def _result(self, duration: float, tier: Tier) -> Result:
        try:
            report = json.loads(self.status)
        except ValueError:
            report = {}
        if "error" in report:
            raise StudioError(f"the sandbox failed to run a program:\n{report['error']}")
        exit_code = os.waitstatus_to_exitcode(report["wait_status"]) if "wait_status" in report else None
        status, detail = self._verdict(exit_code, report)
        if report.get("clean") is False:
            detail = "; ".join(filter(None, [detail, "some of its processes outlived the cleanup"]))
        out, err = (bytes(self.streams[s]).decode("utf-8", "replace") for s in ("out", "err"))
        line, expected, got, exception = self.failure or (None, "", "", "")
        return Result(
            status == "passed", status, exit_code, duration, out, err, tier, detail, self.plan.verified,
            line, expected, got, exception or (_exception(err) if status != "passed" else ""), self.truncated,
        )  # fmt: skip

    def _verdict(self, exit_code: int | None, report: dict[str, object]) -> tuple[str, str]:
        if self.stop is not None:
            return self.stop
        if not report:
            return "failed", "the launcher did not report; processes of this run may be left"
        if self.oom:
            return "oom", f"memory limit ({self.limits.memory_mb} MiB) reached"
        if exit_code == -signal.SIGXCPU:
            return "timeout", "CPU time limit reached"
        if exit_code != 0:
            return "failed", f"exit status {exit_code}"
        if not self.done:
            return "failed", "the program stopped before its last statement"
        for site, count in zip(self.plan.sites, self.seen, strict=True):
            if site.required and count == 0:
                return "failed", f"assert at line {site.line} never ran"
        return "passed", ""


def _exception(stderr: str) -> str:
    """The last line of a Python traceback in `stderr` (`ValueError: boom`), or ""."""
    lines = stderr.rstrip().splitlines()
    if "Traceback (most recent call last):" not in stderr or not lines:
        return ""
    last = lines[-1].strip()
    return last[:300] if last and not last.startswith(("File ", "^", "~")) else ""


@functools.cache
def _devnull() -> int:
    """One write-only /dev/null descriptor for the process, where dropped output is spliced."""
    return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
