"""The sandbox's process side: a zygote that forks one isolated, supervised process tree per candidate program.

Started once per :class:`~wmtp_studio.evaluate.sandbox.Sandbox` as ``python -I -S sandbox_launch.py serve TIER FD``
with an empty environment and a SOCK_SEQPACKET control socket on fd FD. It never runs candidate code itself:

    zygote    one per Sandbox; root at tiers 2-3; at tier 3 inside its own empty network namespace
    launcher  one per run, forked by the zygote: new session, child subreaper; waits, cancels, cleans up, reports
      sweeper   root until the end, then becomes the run's uid and kill(-1)s until no process of that uid is left
      init      tier 3 only: pid 1 of a new pid + mount namespace (fresh /proc; tmpfs /tmp, /var/tmp, /dev/shm)
        candidate new session, rlimits, no_new_privs, seccomp, dedicated uid/gid, clean env; runs the program

The candidate is a fresh process forked from this pristine interpreter (so common modules are already imported),
not an exec of a new one; nothing in it is secret (expected values never leave the harness). A run's request
carries its fds: [stdout, stderr, report, status, cancel]. The launcher writes one JSON object to *status* when
everything is over; the harness closes its end of *cancel* to stop a run (or by dying).

Standard library only and no import of wmtp_studio: the interpreter that runs this file is one the sandbox uid can
execute, which need not be the harness's own.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import itertools
import json
import linecache
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
import traceback
import types
from typing import Any, NoReturn

# Imported for the candidates, who share them through fork: what benchmark programs import most.
import bisect, collections, functools, hashlib, heapq, math, random, re, string, typing  # noqa: E401, F401, I001

PROCESS, UID, NAMESPACE = 1, 2, 3
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 36, 38
PATH = "/usr/local/bin:/usr/bin:/bin"
REPORT_FD = 3
MAX_ITEMS = 100_000  # an iterator the program returns is reported up to this many items
_libc = ctypes.CDLL(None, use_errno=True)


def _ok(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, value: int) -> None:
    _ok(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), "prctl")


def _unshare(flags: int) -> None:
    _ok(_libc.unshare(flags), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if x is None else x.encode() for x in (source, target, fstype, data)]
    _ok(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


# ---------------------------------------------------------------- seccomp: no IP sockets, no io_uring, one ABI
_ARCH = {"x86_64": (0xC000003E, 41, 62), "aarch64": (0xC00000B7, 198, 129)}  # audit arch, socket, kill


def _seccomp(block_group_kill: bool) -> bool:
    """Deny IPv4/IPv6 sockets and io_uring (and kill() of a group or -1 at tier 1); False on an unknown arch."""
    if os.uname().machine not in _ARCH:
        return False
    arch, nr_socket, nr_kill = _ARCH[os.uname().machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, deny, die = 0x7FFF0000, 0x00050000 | errno.EACCES, 0x80000000
    # a label (str) names the next instruction; an instruction is (code, k, jump-if-true, jump-if-false)
    prog: list[str | tuple[int, int, str | None, str | None]] = [
        (ld, 4, None, None),  # seccomp_data.arch: another ABI (i386, x32) would dodge the numbers below
        (jeq, arch, "native", None),
        (ret, die, None, None),
        "native",
        (ld, 0, None, None),  # seccomp_data.nr
        (jge, 0x40000000, "deny", None),  # x32 syscall numbers
        (jeq, 425, "deny", None),  # io_uring_setup: io_uring can open sockets behind this filter's back
        (jeq, nr_socket, "socket", None),
        (jeq, nr_kill, "kill" if block_group_kill else "allow", "allow"),
        "socket",
        (ld, 16, None, None),  # low half of args[0]: the address family
        (jeq, socket.AF_INET, "deny", None),
        (jeq, socket.AF_INET6, "deny", "allow"),
        "kill",
        (ld, 16, None, None),  # low half of args[0]: the pid; negative means a process group or -1
        (jset, 0x80000000, "deny", "allow"),
        "allow",
        (ret, allow, None, None),
        "deny",
        (ret, deny, None, None),
    ]
    labels: dict[str, int] = {}
    for op in prog:
        if isinstance(op, str):
            labels[op] = sum(1 for x in prog[: prog.index(op)] if not isinstance(x, str))
    code = [op for op in prog if not isinstance(op, str)]
    raw = b"".join(
        struct.pack(
            "=HBBI", c, labels[t] - i - 1 if t else 0, labels[f] - i - 1 if f else 0, k
        )
        for i, (c, k, t, f) in enumerate(code)
    )
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(code), ctypes.cast(buffer, ctypes.c_void_p))
    _ok(_libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0), "seccomp")
    return True


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# ---------------------------------------------------------------- the zygote
def serve(tier: int, ctl_fd: int) -> None:
    """Fork a launcher for each request on the control socket until it closes (the harness is gone)."""
    ctl = socket.socket(fileno=ctl_fd)
    try:
        if tier >= NAMESPACE:
            _unshare(CLONE_NEWNET)  # one empty network namespace (loopback down) shared by every candidate
        if tier == PROCESS:
            _prctl(PR_SET_DUMPABLE, 0)  # candidates of our own uid cannot ptrace or read the zygote
    except OSError as exc:
        ctl.send(f"error {exc}".encode())
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished launchers
    ctl.send(b"ready")
    while True:
        head, fds, _, _ = socket.recv_fds(ctl, 64, 8)
        if not head:
            return
        size, body = int(head), bytearray()
        while len(body) < size:
            chunk = ctl.recv(1 << 16)
            if not chunk:
                return
            body += chunk
        if os.fork() == 0:
            ctl.close()
            _launch(json.loads(body), fds)
        for fd in fds:
            os.close(fd)
        del body


# ---------------------------------------------------------------- the launcher
def _launch(cfg: dict[str, Any], fds: list[int]) -> NoReturn:
    status_fd = fds[3]
    try:
        report = _supervise(cfg, fds)
    except BaseException:
        report = {"error": traceback.format_exc()}
    os.write(status_fd, json.dumps(report).encode())
    os._exit(0)


def _supervise(cfg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    out_w, err_w, report_w, status_w, cancel_r = fds
    tier, uid = cfg["tier"], cfg["uid"]
    os.setsid()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the candidate's tree come back to us, never to init
    # tier 3 needs no sweep: when the namespace's init has exited, the kernel has killed all that was left
    sweeper = _start_sweeper(cfg) if tier == UID else None
    exit_r, exit_w = os.pipe()  # tier 3: init tells us how the candidate ended
    if tier >= NAMESPACE:
        _unshare(CLONE_NEWPID | CLONE_NEWNS)  # our next child is pid 1 of a new pid namespace
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        for fd in (wake_r, wake_w, status_w, cancel_r, exit_r, *(sweeper[1:] if sweeper else ())):
            os.close(fd)
        if tier >= NAMESPACE:
            _init(cfg, (out_w, err_w, report_w), exit_w)
        _candidate(cfg, (out_w, err_w, report_w), cfg["workdir"])
    for fd in (out_w, err_w, report_w, exit_w):
        os.close(fd)
    started = time.monotonic()
    wait_status, cancelled = _wait(pid, wake_r, cancel_r)
    ended = time.monotonic()
    if tier >= NAMESPACE:
        told = os.read(exit_r, 32)
        if not told and not cancelled:
            raise RuntimeError(f"the namespace's init failed (wait status {wait_status})")
        wait_status = int(told) if told else wait_status
    clean = _sweep(sweeper) if sweeper else _kill_children() if tier == PROCESS else _reap_rest()
    return {"wait_status": wait_status, "cancelled": cancelled, "clean": clean, "run_s": ended - started}


def _wait(pid: int, wake_r: int, cancel_r: int) -> tuple[int, bool]:
    """Wait for our child, reaping orphans as they come; SIGKILL it when the harness cancels.

    The child is killed, and its process group too, only while it is unreaped (a zombie still holds its pid), so
    no signal can reach a process that later got the same number.
    """
    cancelled = False
    while True:
        ready = select.select([wake_r] if cancelled else [wake_r, cancel_r], [], [])[0]
        if cancel_r in ready:
            cancelled = True
            _kill(pid)
        while _drain(wake_r):
            pass
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is None:
                break
            if info.si_pid == pid:
                try:
                    os.killpg(pid, signal.SIGKILL)  # the candidate's own session (tiers 1-2)
                except (ProcessLookupError, PermissionError):
                    pass
                return os.waitpid(pid, 0)[1], cancelled
            os.waitpid(info.si_pid, 0)


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _start_sweeper(cfg: dict[str, Any]) -> tuple[int, int]:
    """Fork (before any unshare, so it stays in our pid namespace) a process that waits for the go signal."""
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        os.dup2(go_r, 0)
        os.closerange(3, 1 << 16)
        os.dup2(0, 1)
        os.read(0, 1)  # returns when the launcher closes its end: the candidate is gone
        os.setgroups([])
        os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        for _ in range(500):
            os.kill(-1, signal.SIGKILL)  # every process of the run's uid but this one, atomically
            if not _uid_alive(cfg["uid"]):
                os._exit(0)
            time.sleep(0.002)
        os._exit(1)
    os.close(go_r)
    return pid, go_w


def _uid_alive(uid: int) -> bool:
    """Whether any process other than this one has `uid` as its real, effective or saved uid."""
    me, wanted = os.getpid(), str(uid).encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue
        start = status.find(b"\nUid:") + 5
        if wanted in status[start : status.find(b"\n", start)].split()[:3]:
            return True
    return False


def _sweep(sweeper: tuple[int, int]) -> bool:
    """Kill everything of the run's uid, reaping what comes back to us; True when nothing was left."""
    sweeper_pid, go_w = sweeper
    os.close(go_w)
    clean = False
    while True:
        child, wait_status = os.waitpid(-1, 0)
        if child == sweeper_pid:
            clean = os.waitstatus_to_exitcode(wait_status) == 0
            break
    return _reap_rest() and clean


def _reap_rest() -> bool:
    """Reap whatever is left of our children (all dead by now); False if some are still running after 2 s."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            child, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if child == 0:
            time.sleep(0.001)
    return False


def _kill_children() -> bool:
    """Tier 1: kill every process that comes back to us (we are their subreaper) until none is left."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        for child in _children():
            _kill(child)
        try:
            child, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if child == 0:
            time.sleep(0.001)
    return False


def _children() -> list[int]:
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# ---------------------------------------------------------------- init (tier 3) and the candidate
def _init(cfg: dict[str, Any], fds: tuple[int, int, int], exit_w: int) -> NoReturn:
    """Pid 1 of the run's pid namespace: when it exits, the kernel kills every process left in it."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates back to the host
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # shows this namespace's processes only
        size = f"size={cfg['tmpfs_mb']}m,nr_inodes=4096,mode=1777"
        for path in ("/tmp", "/var/tmp", "/dev/shm"):
            if os.path.isdir(path) and not os.path.islink(path):
                _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, size)
        workdir = "/tmp/sandbox"
        os.mkdir(workdir, 0o700)
        os.chown(workdir, cfg["uid"], cfg["gid"])
    except BaseException:
        traceback.print_exc()
        os._exit(70)
    pid = os.fork()
    if pid == 0:
        os.close(exit_w)
        _candidate(cfg, fds, workdir)
    for fd in fds:
        os.close(fd)
    while True:
        child, wait_status = os.waitpid(-1, 0)
        if child == pid:
            os.write(exit_w, str(wait_status).encode())
            os._exit(0)


def _candidate(cfg: dict[str, Any], fds: tuple[int, int, int], workdir: str) -> NoReturn:
    """Become the candidate: isolate this process, drop to the run's uid, run the program. Never returns."""
    try:
        os.setsid()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        null = os.open(os.devnull, os.O_RDONLY)
        for target, fd in enumerate((null, *fds)):
            os.dup2(fd, target)
        os.closerange(REPORT_FD + 1, 1 << 16)
        os.chdir(workdir)
        os.umask(0o077)
        _set_limits(cfg)
        os.environ.clear()
        os.environ.update(PATH=PATH, LANG="C.UTF-8", HOME=workdir)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _seccomp(block_group_kill=cfg["tier"] == PROCESS)
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        _prctl(PR_SET_DUMPABLE, 1)  # changing uid cleared it; the program may read its own /proc/self
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
    except BaseException:
        _emit('{"setup":"%s"}\n' % _hex(traceback.format_exc()))
        os._exit(71)
    _run_program(cfg["program"], cfg["nonce"])


def _set_limits(cfg: dict[str, Any]) -> None:
    mib = 1 << 20
    cpu = int(cfg["cpu_s"])
    procs = int(cfg["max_procs"])
    if cfg["uid"] is None:  # tier 1: the limit counts every process of the harness's own uid
        procs += _count_own_processes()
    for limit, value in (
        (resource.RLIMIT_AS, cfg["memory_mb"] * mib),
        (resource.RLIMIT_FSIZE, cfg["max_file_mb"] * mib),
        (resource.RLIMIT_NOFILE, 256),
        (resource.RLIMIT_NPROC, procs),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL a second later


def _count_own_processes() -> int:
    uid = os.getuid()
    count = 0
    for name in os.listdir("/proc"):
        try:
            count += name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid
        except OSError:
            pass
    return count


# ---------------------------------------------------------------- inside the candidate's process
def _run_program(source: str, nonce: str) -> NoReturn:
    """Run the program as `__main__`; after its last statement, report completion. Then exit at once."""
    module = types.ModuleType("__main__")
    module.__dict__.update(__builtins__=builtins, __file__="program.py", __wmtp_probe=_probe)
    sys.modules["__main__"] = module
    sys.argv[:] = ["program.py"]
    linecache.cache["program.py"] = (len(source), None, source.splitlines(True), "program.py")
    code = 1
    try:
        exec(compile(source, "program.py", "exec"), module.__dict__)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (exc.code is not None)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except MemoryError:
        _emit('{"oom":1}\n')
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
    else:
        _flush()
        _emit('{"done":"%s"}\n' % nonce)
        code = 0
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _emit(text: str) -> None:
    data = text.encode()
    while data:
        data = data[os.write(REPORT_FD, data) :]


def _probe(site: int, *thunks: Any) -> None:
    """Report the values of one assert's probes; the harness, not this process, decides whether it holds."""
    parts = []
    for thunk in thunks:
        try:
            value = thunk()
        except Exception as exc:
            parts.append('["x","%s"]' % _hex(type(exc).__name__))
            continue
        try:
            parts.append(_enc(value, 0))
        except Exception:
            parts.append('["o","3f"]')
    _emit('{"s":%d,"v":[%s]}\n' % (site, ",".join(parts)))


def _hex(text: str) -> str:
    return str.encode(text, "utf-8", "surrogatepass").hex()


def _enc(v: Any, depth: int) -> str:
    """Plain data as tagged JSON (see sandbox_verdict._decode); subclasses are read through the base type."""
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if depth > 64:
        return '["o","%s"]' % _hex("nested too deep")
    if isinstance(v, int):
        return '["i","%s"]' % int.__format__(v, "x")
    if isinstance(v, float):
        return '["f","%s"]' % float.hex(v)
    if isinstance(v, complex):
        return '["c","%s","%s"]' % (float.hex(v.real), float.hex(v.imag))
    if isinstance(v, str):
        return '["s","%s"]' % _hex(v)
    if isinstance(v, bytes | bytearray):
        return '["%s","%s"]' % ("b" if isinstance(v, bytes) else "B", bytes.hex(v))
    items: Any
    for kind, tag, iterate in _CONTAINERS:
        if isinstance(v, kind):
            items = iterate(v)
            break
    else:
        if not (hasattr(type(v), "__next__") and hasattr(type(v), "__iter__")):
            return '["o","%s"]' % _hex(type(v).__name__)
        items = list(itertools.islice(v, MAX_ITEMS + 1))
        if len(items) > MAX_ITEMS:
            return '["o","%s"]' % _hex("long iterator")
        tag = "I"
    return '["%s"%s]' % (tag, "".join("," + _enc(x, depth + 1) for x in items))


_CONTAINERS: tuple[tuple[type, str, Any], ...] = (
    (list, "l", list.__iter__),
    (tuple, "t", tuple.__iter__),
    (dict, "d", lambda d: itertools.chain.from_iterable(dict.items(d))),
    (set, "S", set.__iter__),
    (frozenset, "F", frozenset.__iter__),
)


# ---------------------------------------------------------------- tier probe
def probe_tier(uid: int) -> int:
    """The highest tier this host gives: namespaces (3), a dedicated uid (2), or neither (1)."""
    if os.geteuid() != 0:
        return PROCESS
    pid = os.fork()
    if pid == 0:
        try:
            _unshare(CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWNS)
            inner = os.fork()
            if inner == 0:
                _mount(None, "/", None, MS_REC | MS_PRIVATE)
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")
                os.setresuid(uid, uid, uid)
                os._exit(0)
            os._exit(os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1]))
        except BaseException:
            os._exit(1)
    return NAMESPACE if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 else UID


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        print(probe_tier(int(sys.argv[2])))
