"""The sandbox's process side: a zygote that forks one isolated, supervised process tree per candidate program.

Started once per :class:`~wmtp_studio.evaluate.sandbox.Sandbox` as ``python -I -S launch.py serve TIER FD``
with an empty environment and a SOCK_SEQPACKET control socket on fd FD. It never runs candidate code itself. The
process tree of one run (``ps`` shows these names):

    wmtp-zygote     one per Sandbox; root at tiers 2-3; at tier 3 in an empty network namespace, chrooted
    wmtp-launcher   one per run: new session, child subreaper; waits, cancels, cleans up, reports
      wmtp-sweeper    tier 2: root until the end, then the run's uid, kill(-1) until no process of it is left
      wmtp-init       tier 3: pid 1 of new pid, mount and IPC namespaces (fresh /proc, private tmpfs scratch)
        wmtp-candidate  new session, rlimits, no_new_privs, seccomp, the run's uid/gid, clean env: the program

The candidate (``child``) is a fresh fork of this interpreter, which has never run untrusted code and has
already imported the common modules: no exec of a new ``python``. Nothing in it is secret (the expected values
never leave the harness). A request carries the run's fds [stdout, stderr, report, status, cancel]; the launcher
writes one JSON object to *status* when everything is over, and stops the run when the harness closes *cancel*
(or dies). The zygote waits for its launchers, so the CPU time of every run adds up in the harness's
RUSAGE_CHILDREN once the Sandbox is closed.

Standard library only and no import of wmtp_studio: the interpreter that runs this file is one the sandbox uid can
execute, which need not be the harness's own.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from typing import Any, NoReturn

# Imported once for all candidates, who share them through fork: what benchmark programs import most.
PRELOADED: tuple[str, ...] = ("bisect", "collections", "functools", "hashlib", "heapq", "math", "random")
PRELOADED += ("re", "string", "typing")
for _name in PRELOADED:
    __import__(_name)

try:  # as part of the package (type checking, tests)
    from wmtp_studio.evaluate.sandbox import child as sandbox_child
except ImportError:  # as a script, run by an interpreter that need not see the package (python -I -S)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import child as sandbox_child  # type: ignore[no-redef]

    del sys.path[0]
    sys.modules["sandbox_child"] = sys.modules.pop("child")  # candidates see no module named plain `child`

PROCESS, UID, NAMESPACE = sandbox_child.PROCESS, sandbox_child.UID, sandbox_child.NAMESPACE
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 0x4000, 1 << 18
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable: private per run at tier 3, swept at tier 2
_BPF: bytes | None = None  # the seccomp program, built once by the zygote
_mount, _unshare, _prctl = sandbox_child.mount, sandbox_child.unshare, sandbox_child.prctl


# ---------------------------------------------------------------- the zygote
def serve(tier: int, ctl_fd: int) -> None:
    """Fork a launcher for each request on the control socket until it closes (the harness is gone)."""
    ctl = socket.socket(fileno=ctl_fd)
    sandbox_child.set_name("wmtp-zygote")
    try:
        if tier >= NAMESPACE:
            _unshare(CLONE_NEWNET | CLONE_NEWNS)  # one empty network namespace (loopback down) for all runs
            _build_root()
        if tier == PROCESS:
            # candidates run as our own uid: they must not ptrace the zygote or read its /proc entries
            _prctl(sandbox_child.PR_SET_DUMPABLE, 0)
    except OSError as exc:
        ctl.send(f"error {exc}".encode())
        return
    global _BPF
    _BPF = sandbox_child.seccomp_filter(block_group_kill=tier == PROCESS)
    gc.freeze()  # what the zygote holds now is shared with every child; their collections need not visit it
    ctl.send(b"ready")
    while True:
        head, fds, _, _ = socket.recv_fds(ctl, 64, 8)
        if not head:
            break
        size, body = int(head), bytearray()
        while len(body) < size and (chunk := ctl.recv(1 << 16)):
            body += chunk
        if len(body) < size:
            break
        if os.fork() == 0:
            try:
                ctl.close()
                _launch(json.loads(body), fds)
            finally:
                os._exit(70)  # never back into this loop
        for fd in fds:
            os.close(fd)
        del body
        _reap(os.WNOHANG)
    _reap(0)  # wait for the runs in flight (their cancel pipes are closed): their CPU time is the harness's


def _reap(options: int) -> None:
    """Reap finished launchers (we wait for them, so their CPU time adds up in the harness's RUSAGE_CHILDREN)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, options)[0]:
            pass


def _build_root() -> None:
    """Tier 3: chroot the zygote (and so every run) into a minimal read-only tree.

    It holds the system's binaries and libraries, this interpreter and a few device nodes; not /home, /root,
    /work, /opt, /srv, /var or /etc, so no project file, dataset or benchmark answer is readable from a run.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates back to the host
    new = "/tmp"  # hidden, in this mount namespace only, by the tmpfs that becomes the root
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755")
    tops = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    for path in dict.fromkeys([*tops, sys.base_prefix, sys.base_exec_prefix]):
        if path not in tops and any(path.startswith(top + "/") for top in tops):
            continue
        if os.path.islink(path) and path in tops:
            os.symlink(os.readlink(path), new + path)  # merged /usr: /bin -> usr/bin
        elif os.path.isdir(path):
            os.makedirs(new + path, exist_ok=True)
            _mount(path, new + path, None, MS_BIND | MS_REC)
            _mount(None, new + path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    for path in ("/dev", "/dev/shm", "/proc", "/etc", "/tmp", "/var", "/var/tmp"):
        os.mkdir(new + path, 0o1777 if path in SCRATCH else 0o755)
    for node in ("null", "zero", "full", "random", "urandom"):
        open(f"{new}/dev/{node}", "w").close()
        _mount(f"/dev/{node}", f"{new}/dev/{node}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "0"), ("stdout", "1"), ("stderr", "2")):
        os.symlink(target if "/" in target else f"/proc/self/fd/{target}", f"{new}/dev/{name}")
    os.chroot(new)
    os.chdir("/")


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
    sandbox_child.set_name("wmtp-launcher")
    os.setsid()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # orphans of the candidate's tree come back to us, never to the host's init
    _prctl(sandbox_child.PR_SET_CHILD_SUBREAPER, 1)
    # tier 3 needs no sweep: when the namespace's init has exited, the kernel has killed all that was left
    sweeper = _start_sweeper(cfg) if tier == UID else None
    exit_r, exit_w = os.pipe()  # tier 3: init tells us how the candidate ended
    if tier >= NAMESPACE:
        _unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC)  # our next child is pid 1 of a new pid namespace
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        for fd in (wake_r, wake_w, status_w, cancel_r, exit_r, *(sweeper[1:] if sweeper else ())):
            os.close(fd)
        if tier >= NAMESPACE:
            _init(cfg, (out_w, err_w, report_w), exit_w)
        sandbox_child.become_candidate(cfg, (out_w, err_w, report_w), cfg["workdir"], _BPF)
    for fd in (out_w, err_w, report_w, exit_w):
        os.close(fd)
    started = time.monotonic()
    wait_status, cancelled = _wait(pid, wake_r, cancel_r, init=tier >= NAMESPACE)
    ended = time.monotonic()
    if tier >= NAMESPACE:
        told = os.read(exit_r, 32)
        if not told and not cancelled:
            raise RuntimeError(f"the namespace's init failed (wait status {wait_status})")
        wait_status = int(told) if told else wait_status
    clean = _sweep(sweeper) if sweeper else _reap_rest(kill=tier == PROCESS)
    if tier == UID:
        _sweep_scratch(uid)
    return {"wait_status": wait_status, "cancelled": cancelled, "clean": clean, "run_s": ended - started}


def _wait(pid: int, wake_r: int, cancel_r: int, init: bool = False) -> tuple[int, bool]:
    """Wait for our child, reaping orphans as they come; SIGKILL it when the harness cancels.

    The child is killed, and its process group too, only while it is unreaped (a zombie still holds its pid), so
    no signal can reach a process that later got the same number. A namespace's `init` is asked first (SIGTERM):
    it kills the run and reaps it, so that the run's CPU time is accounted (the kernel's own clean-up of a killed
    init reaps without accounting); SIGKILL follows if it has not exited within a second.
    """
    cancelled, kill_at = False, math.inf
    while True:
        timeout = max(kill_at - time.monotonic(), 0.0) if kill_at < math.inf else None
        ready = select.select([wake_r] if cancelled else [wake_r, cancel_r], [], [], timeout)[0]
        if cancel_r in ready:
            cancelled = True
            _kill(pid, signal.SIGTERM if init else signal.SIGKILL)
            kill_at = time.monotonic() + 1.0 if init else math.inf
        elif cancelled and not ready and time.monotonic() >= kill_at:
            _kill(pid)
            kill_at = math.inf
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
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)  # the candidate's own session (tiers 1-2)
                return os.waitpid(pid, 0)[1], cancelled
            os.waitpid(info.si_pid, 0)


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _start_sweeper(cfg: dict[str, Any]) -> tuple[int, int]:
    """Fork (before any unshare, so it stays in our pid namespace) a process that waits for the go signal."""
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        sandbox_child.set_name("wmtp-sweeper")
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


def _sweep_scratch(uid: int) -> None:
    """Tier 2: remove what the run's uid left in the shared world-writable directories (that uid is ours alone)."""
    for directory in SCRATCH:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def _reap_rest(kill: bool = False) -> bool:
    """Reap what is left of our children; False if some still run after 2 s.

    With `kill` (tier 1, where no uid or namespace ends them for us), SIGKILL each child first: orphans of the
    candidate's tree keep coming back to us, their subreaper, until none is left.
    """
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        for child in _children() if kill else ():
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


# ---------------------------------------------------------------- init (tier 3)
def _init(cfg: dict[str, Any], fds: tuple[int, int, int], exit_w: int) -> NoReturn:
    """Pid 1 of the run's pid namespace: when it exits, the kernel kills every process left in it."""
    try:
        sandbox_child.set_name("wmtp-init")
        _prctl(sandbox_child.PR_SET_PDEATHSIG, signal.SIGKILL)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates back to the host
        _mount(
            "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC
        )  # shows this namespace's processes only
        size = f"size={cfg['tmpfs_mb']}m,nr_inodes=4096,mode=1777"
        for path in SCRATCH:
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, size)
        workdir = "/tmp/sandbox"
        os.mkdir(workdir, 0o700)
        os.chown(workdir, cfg["uid"], cfg["gid"])
    except BaseException:
        traceback.print_exc()
        os._exit(70)
    # Asked to stop (the run was cancelled), kill everything in this namespace but us, then reap as usual.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(-1, signal.SIGKILL))
    pid = os.fork()
    if pid == 0:
        os.close(exit_w)
        sandbox_child.become_candidate(cfg, fds, workdir, _BPF)
    for fd in fds:
        os.close(fd)
    while True:
        child, wait_status = os.waitpid(-1, 0)
        if child == pid:
            os.write(exit_w, str(wait_status).encode())
            os._exit(0)


# ---------------------------------------------------------------- tier probe
def probe_tier(uid: int) -> int:
    """The highest tier this host gives: namespaces (3), a dedicated uid (2), or neither (1)."""
    if os.geteuid() != 0:
        return PROCESS
    pid = os.fork()
    if pid == 0:
        try:
            _unshare(CLONE_NEWNET | CLONE_NEWNS)
            _build_root()
            _unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC)
            inner = os.fork()
            if inner == 0:
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
