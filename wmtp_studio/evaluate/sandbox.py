"""Run untrusted programs (a model's completion followed by its tests) and judge them from evidence they cannot forge.

Threat model. The program is hostile: it may loop, exhaust memory, processes, files or output, kill or signal
anything it can reach, read secrets, use the network, tamper with the interpreter (built-ins, ``__eq__``,
``sys.exit``, trace hooks, frame walking, ``gc``, ctypes), exit early with status 0, or try to leave processes
behind. The harness (this module, in the caller's process) never executes it; the verdict is decided here.

Verdict. Before the run, ``sandbox_verdict.make_plan`` rewrites every test assert so that the program only
*reports* the values of the sub-expressions the harness cannot compute (calls into the program, its variables);
the comparison and the expected literal stay in the harness. ``assert f(2) == 4`` runs in the child as
``__wmtp_probe(0, lambda: (f(2)))``; the child reports ``f(2)`` as tagged plain data, the harness rebuilds it with
fresh built-in types and evaluates ``value == 4`` with the real built-ins. A result passes only if the process
exited 0 after its last statement (a completion record with a per-run nonce), every reported assert held, and
every assert that is reached whenever its scope runs was reported at least once. Tampering inside the child can
change what is reported, but not what it is compared with: the expected values never enter the candidate's
process, so faked equality, patched built-ins, frame walking, ``gc`` searches and early exits cannot make an
assert with a literal expected value pass (``Result.verified`` says whether every assert was of that kind; an
assert such as ``assert f(x) == y`` with ``y`` computed by the program is judged the same way but could be lied
about). The nonce only defeats blind forgeries: the child can find it in its own memory.

Isolation (``Tier``, recorded in every ``Result``; see ``sandbox_launch`` for the process tree):
  PROCESS    own process (forked from a pristine zygote interpreter, never the harness), new session, rlimits
             (address space, CPU, file size, open files, processes), temp dir cwd, stdin /dev/null, scrubbed env,
             no_new_privs, seccomp (no IPv4/IPv6 sockets, no io_uring, no kill() of a group or -1). It runs as
             the harness's own uid, so it can signal or ptrace the harness: not a boundary against a targeted attack.
  UID        + a dedicated uid/gid per slot (root only): it cannot touch the harness, its files or other slots;
             kill(-1) as that uid clears everything it spawned, and RLIMIT_NPROC caps its fork bombs.
  NAMESPACE  + an empty network namespace and a pid + mount namespace per run: no network at all, a /proc
             showing only its own processes, private tmpfs /tmp, /var/tmp and /dev/shm; when the run ends, the
             namespace's pid 1 exits and the kernel kills whatever is left. Without namespaces, seccomp is the
             only network barrier.
"""

from __future__ import annotations

import enum
import fcntl
import functools
import json
import math
import os
import pwd
import queue
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.sandbox_verdict import Plan, decode_report, judge, make_plan

LAUNCHER = Path(__file__).with_name("sandbox_launch.py")
DEFAULT_UID_BASE = 2_000_000_000  # far above login (1000+), container (100000+, 524288+) and systemd ranges
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_MAX_REPORT_BYTES = 32 << 20
_GRACE_S = 5.0  # how long a cancelled run may take to be cleaned up and reported


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
    max_output_bytes: int = 64_000  # per stream; beyond it the program is stopped and fails
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
    stdout: str  # at most Limits.max_output_bytes of it
    stderr: str
    tier: Tier
    detail: str = ""  # why it did not pass: the first failed assert, the limit it hit, its exit status
    verified: bool = False  # every assert compared the program's output with a literal it never saw


@dataclass(frozen=True)
class _Host:
    tier: Tier
    python: str  # an interpreter an unprivileged uid can execute (tiers 2-3)
    reason: str


def detect_tier() -> Tier:
    """The strongest isolation this host provides (probed once per process)."""
    return _host().tier


@functools.cache
def _host() -> _Host:
    if os.geteuid() != 0:
        return _Host(Tier.PROCESS, sys.executable, "not running as root, so no dedicated uid")
    python = _python_for(DEFAULT_UID_BASE)
    if python is None:
        version = "%d.%d" % sys.version_info[:2]
        return _Host(Tier.PROCESS, sys.executable, f"no python{version} that an unprivileged uid can execute")
    probe = [python, "-I", "-S", str(LAUNCHER), "probe", str(DEFAULT_UID_BASE)]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=30, env=_ENV, cwd="/", check=False)
    tier = Tier(int(done.stdout.strip() or Tier.UID))
    reason = "namespaces available" if tier == Tier.NAMESPACE else "cannot create namespaces"
    return _Host(tier, python, reason)


def _python_for(uid: int) -> str | None:
    """An interpreter of our Python version that `uid` can run (the venv's may sit under a private home)."""
    version = "%d.%d" % sys.version_info[:2]
    names = [sys.executable, getattr(sys, "_base_executable", ""), os.path.realpath(sys.executable)]
    names += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}", shutil.which(f"python{version}")]
    check = "import json, math, sys; print('%d.%d' % sys.version_info[:2])"
    for name in dict.fromkeys(n for n in names if n and os.path.exists(n)):
        try:
            done = subprocess.run(
                [name, "-I", "-S", "-c", check],
                **{"user": uid, "group": uid, "extra_groups": []},
                capture_output=True,
                text=True,
                timeout=30,
                env=_ENV,
                cwd="/",
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout.strip() == version:
            return name
    return None


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
        host = _host()
        self.tier = host.tier if tier is None else Tier(tier)
        if self.tier > host.tier:
            raise StudioError(f"tier {self.tier.name} is not available: this host provides {host.tier.name}")
        if require_tier is not None and self.tier < require_tier:
            asked = f" (tier {self.tier.name} was asked for)" if self.tier < host.tier else f" ({host.reason})"
            raise StudioError(
                f"refusing to run below tier {Tier(require_tier).name}; this host provides {host.tier.name}{asked}"
            )
        self.limits = limits
        self.slots = slots or min(os.cpu_count() or 1, 8)
        self._python = host.python if self.tier >= Tier.UID else sys.executable
        self._locks: list[int] = []
        self.uids: tuple[int, ...] = self._claim_uids(uid_base) if self.tier >= Tier.UID else ()
        self._free: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        for uid in self.uids or [None] * self.slots:
            self._free.put(uid)
        self._zygote: _Zygote | None = None
        self._zygote_lock = threading.Lock()

    def run(self, program: str, *, test_timeout_s: float | None = None) -> Result:
        """Run one program (candidate code followed by its tests) and judge it."""
        try:
            plan = make_plan(program)
        except (SyntaxError, ValueError) as exc:
            return Result(False, "error", None, 0.0, "", f"{type(exc).__name__}: {exc}", self.tier, "does not compile")
        uid = self._free.get()
        try:
            return self._execute(plan, uid, test_timeout_s)
        finally:
            self._free.put(uid)

    def run_many(self, programs: Sequence[str], *, test_timeout_s: float | None = None) -> list[Result]:
        """Run programs `slots` at a time; results in the order of `programs`."""
        with ThreadPoolExecutor(max_workers=self.slots) as pool:
            return list(pool.map(lambda p: self.run(p, test_timeout_s=test_timeout_s), programs))

    def close(self) -> None:
        """Stop the zygote and release the uids (runs still in flight are cancelled)."""
        with self._zygote_lock:
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

    def _claim_uids(self, base: int) -> tuple[int, ...]:
        """One uid per slot, each held under an flock so that no other sandbox on this host uses it meanwhile."""
        lock_dir = Path("/run/wmtp-sandbox" if os.access("/run", os.W_OK) else tempfile.gettempdir())
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        uids: list[int] = []
        for uid in range(base, base + 65536):
            if len(uids) == self.slots:
                break
            try:
                pwd.getpwuid(uid)
                continue  # a real account: never kill(-1) as it
            except KeyError:
                pass
            fd = os.open(lock_dir / f"wmtp-sandbox-uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._locks.append(fd)
            uids.append(uid)
        return tuple(uids)

    def _submit(self, config: bytes, fds: list[int]) -> None:
        with self._zygote_lock:
            for attempt in (1, 2):
                if self._zygote is None:
                    self._zygote = _Zygote(self._python, self.tier)
                try:
                    return self._zygote.submit(config, fds)
                except OSError:
                    self._zygote.close()  # it died; start another once
                    self._zygote = None
                    if attempt == 2:
                        raise StudioError("the sandbox zygote process keeps dying") from None

    def _execute(self, plan: Plan, uid: int | None, test_timeout_s: float | None) -> Result:
        limits = self.limits
        nonce = secrets.token_hex(16)
        workdir = None
        if self.tier < Tier.NAMESPACE:  # tier 3 makes its own in a private tmpfs
            workdir = tempfile.mkdtemp(prefix="wmtp-sandbox-")
            if uid is not None:
                os.chown(workdir, uid, uid)
        config = {
            "program": plan.source,
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
        watch = _Watch(plan, limits, nonce, test_timeout_s)
        try:
            return watch.run(self, json.dumps(config).encode(), self.tier)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)


class _Zygote:
    """The trusted process that forks every run (see sandbox_launch); one per Sandbox, started on first use."""

    def __init__(self, python: str, tier: Tier) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [python, "-I", "-S", str(LAUNCHER), "serve", str(int(tier)), str(theirs.fileno())]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env=_ENV,
            cwd="/", start_new_session=True,
        )  # fmt: skip
        theirs.close()
        ours.settimeout(60)
        try:
            hello = ours.recv(4096)
        except OSError:
            hello = b"no answer"
        ours.settimeout(None)
        if hello != b"ready":
            self.process.kill()
            raise StudioError(f"the sandbox zygote failed to start: {hello.decode(errors='replace')}")
        self.socket = ours

    def submit(self, config: bytes, fds: list[int]) -> None:
        socket.send_fds(self.socket, [str(len(config)).encode()], fds)
        for i in range(0, len(config), 1 << 16):
            self.socket.send(config[i : i + (1 << 16)])

    def close(self) -> None:
        self.socket.close()  # the zygote exits on EOF; launchers still running see their cancel pipes close
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Watch:
    """The harness's view of one run: reads its streams and reports, enforces limits, decides the verdict."""

    def __init__(self, plan: Plan, limits: Limits, nonce: str, test_timeout_s: float | None) -> None:
        self.plan, self.limits, self.test_timeout_s = plan, limits, test_timeout_s
        self.done_line = b'{"done":"%s"}' % nonce.encode()
        self.streams = {"out": bytearray(), "err": bytearray()}
        self.report = bytearray()
        self.report_total = 0
        self.seen = [0] * len(plan.sites)
        self.done = self.oom = False
        self.stop: tuple[str, str] | None = None  # (status, detail) of whatever ended the run early
        self.status = bytearray()
        self.test_deadline = math.inf

    def run(self, sandbox: Sandbox, config: bytes, tier: Tier) -> Result:
        names = ("out", "err", "report", "status")
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(5)]
        cancel_w = pipes[4][1]
        theirs = [pipes[0][1], pipes[1][1], pipes[2][1], pipes[3][1], pipes[4][0]]
        start = time.monotonic()
        try:
            sandbox._submit(config, theirs)
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
        while selector.get_map():
            now = time.monotonic()
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
            for key, _ in selector.select(max(wait, 0.0)):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    if key.data == "status":
                        give_up = min(give_up, time.monotonic() + 1.0)  # stragglers hold a pipe: stop reading
                else:
                    self._feed(key.data, data)
        for key in list(selector.get_map().values()):
            os.close(key.fd)
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
        else:
            kept = self.streams[name]
            room = self.limits.max_output_bytes - len(kept)
            kept += data[: max(room, 0)]
            if len(data) > room:
                self._halt("failed", f"std{name} over {self.limits.max_output_bytes} bytes")

    def _on_report(self, line: bytes) -> None:
        if self.stop is not None:
            return
        if line == self.done_line:
            self.done = True
        elif line == b'{"oom":1}':
            self.oom = True
        elif line.startswith(b'{"setup":"'):  # the launch failed before the program ran (or it says so)
            text = bytes.fromhex(line[10:-2].decode("ascii", "replace")).decode("utf-8", "replace")
            self._halt("error", "sandbox setup failed: " + text.strip().splitlines()[-1])
        else:
            try:
                index, values = decode_report(line, self.plan.sites)
            except ValueError:
                self._halt("failed", "malformed report from the program")
                return
            failure = judge(self.plan.sites[index], values)
            if failure is not None:
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
        out, err = (bytes(self.streams[s]).decode("utf-8", "replace") for s in ("out", "err"))
        return Result(status == "passed", status, exit_code, duration, out, err, tier, detail, self.plan.verified)

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
