"""The candidate's side of the sandbox: isolate the process the launcher forked, then run the program in it.

`become_candidate` turns a fresh fork of the zygote (see ``launch``) into the candidate: new session,
stdin /dev/null (or a memfd holding the run's input), stdout/stderr/report pipes on fds 1-3 and nothing else, rlimits, a clean environment,
no_new_privs, a seccomp filter, the run's own uid/gid, default signal handling. `run_program` then executes the
program as module ``__main__`` (stdio programs) or ``candidate`` (function benchmarks: like the official harnesses,
whose ``__name__`` is not ``"__main__"``, so ``if __name__ == "__main__":`` blocks do not run), with
``__wmtp_probe`` in its globals: each test assert, rewritten by
``verdict.make_plan``, calls it with the values it needs, and it writes them as one JSON line on fd 3
(``{"s": K, "v": [...]}``) in the tagged form ``judge.decode_report`` reads. After the last statement it
writes ``{"done": NONCE}``, then exits at once (no atexit handlers, no waiting for threads).

Nothing here is trusted by the harness: the program can replace any of it. Standard library only, and no import of
wmtp_studio, for the reason given in ``launch``.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import itertools
import linecache
import os
import resource
import signal
import socket
import struct
import sys
import traceback
import types
from typing import Any, NoReturn

PROCESS, UID, NAMESPACE = 1, 2, 3
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME, PR_SET_SECCOMP = 1, 4, 15, 22
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
PATH = "/usr/local/bin:/usr/bin:/bin"
REPORT_FD = 3
MAX_ITEMS = 100_000  # an iterator the program returns is reported up to this many items
_libc = ctypes.CDLL(None, use_errno=True)


def check(ret: int, what: str) -> None:
    """Raise OSError for a failed libc call."""
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, value: int) -> None:
    check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), "prctl")


def set_name(name: str) -> None:
    """Name this process (its /proc comm, what ps and top show) after its role in the sandbox."""
    _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def unshare(flags: int) -> None:
    check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    args = [None if x is None else x.encode() for x in (source, target, fstype, data)]
    check(_libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]), f"mount {target}")


# ---------------------------------------------------------------- seccomp: no IP sockets, no io_uring, one ABI
_ARCH = {"x86_64": (0xC000003E, 41, 62), "aarch64": (0xC00000B7, 198, 129)}  # audit arch, socket, kill


def seccomp_filter(block_group_kill: bool) -> bytes | None:
    """BPF denying IPv4/IPv6 sockets and io_uring (and kill() of a group or -1 at tier 1); None on other arches."""
    if os.uname().machine not in _ARCH:
        return None
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
    return b"".join(
        struct.pack("=HBBI", c, labels[t] - i - 1 if t else 0, labels[f] - i - 1 if f else 0, k)
        for i, (c, k, t, f) in enumerate(code)
    )


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_filter(raw: bytes | None) -> None:
    if raw is not None:
        buffer = ctypes.create_string_buffer(raw, len(raw))
        program = _SockFprog(len(raw) // 8, ctypes.cast(buffer, ctypes.c_void_p))
        check(_libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(program), 0, 0), "seccomp")


# ---------------------------------------------------------------- becoming the candidate
def become_candidate(
    cfg: dict[str, Any], fds: tuple[int, int, int], workdir: str, bpf: bytes | None
) -> NoReturn:
    """Isolate this (freshly forked, still root) process, drop to the run's uid, run the program. Never returns."""
    try:
        set_name("wmtp-candidate")
        os.setsid()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # Targets 0-3 in order; no source is 0-2 (those are open), and 3 is written last, so none is clobbered.
        for target, fd in enumerate((_stdin(cfg.get("stdin")), *fds)):
            os.dup2(fd, target)
        os.closerange(REPORT_FD + 1, 1 << 16)
        os.chdir(workdir)
        os.umask(0o077)
        _set_limits(cfg)
        os.environ.clear()
        os.environ.update(PATH=PATH, LANG="C.UTF-8", HOME=workdir)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        _install_filter(bpf)
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        prctl(PR_SET_DUMPABLE, 1)  # changing uid cleared it; the program may read its own /proc/self
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)  # as in a fresh interpreter (the launcher handled SIGCHLD)
    except BaseException:
        _emit(f'{{"setup":"{_hex(traceback.format_exc())}"}}\n')
        os._exit(71)
    run_program(cfg["program"], cfg["nonce"], cfg.get("module", "__main__"))


def _stdin(text: str | None) -> int:
    """/dev/null, or an in-memory file holding the program's input (any size, readable and seekable)."""
    if text is None:
        return os.open(os.devnull, os.O_RDONLY)
    fd = os.memfd_create("stdin")
    data = text.encode()
    while data:
        data = data[os.write(fd, data) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


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
        with contextlib.suppress(OSError):
            count += name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid
    return count


# ---------------------------------------------------------------- running the program
def run_program(source: str, nonce: str, name: str = "__main__") -> NoReturn:
    """Run the program as module `name`; after its last statement, report completion. Then exit at once."""
    module = types.ModuleType(name)
    module.__dict__.update(__builtins__=builtins, __file__="program.py", __wmtp_probe=_probe)
    sys.modules["__main__"] = sys.modules[name] = module  # pickle and dataclasses look modules up by name
    sys.argv[:] = ["program.py"]
    linecache.cache["program.py"] = (len(source), None, source.splitlines(True), "program.py")
    code = 1
    try:
        exec(compile(source, "program.py", "exec"), module.__dict__)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except MemoryError:
        _emit('{"oom":1}\n')
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
    else:
        _flush()
        _emit(f'{{"done":"{nonce}"}}\n')
        code = 0
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


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
            parts.append(f'["x","{_hex(type(exc).__name__)}","{_hex(_message(exc))}"]')
            continue
        try:
            parts.append(encode(value))
        except Exception:
            parts.append(f'["o","{_hex("unreadable")}"]')
    _emit(f'{{"s":{int(site)},"v":[{",".join(parts)}]}}\n')


def _message(exc: BaseException) -> str:
    """The exception's message, short (it is only shown, never judged)."""
    try:
        return str(exc)[:300]
    except Exception:
        return ""


def _hex(text: str) -> str:
    return str.encode(text, "utf-8", "surrogatepass").hex()


def encode(v: Any, depth: int = 0) -> str:
    """Plain data as tagged JSON (see judge.py); subclasses are read through their base type's methods."""
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if depth > 64:
        return f'["o","{_hex("nested too deep")}"]'
    if isinstance(v, int):
        return f'["i","{int.__format__(v, "x")}"]'
    if isinstance(v, float):
        return f'["f","{float.hex(v)}"]'
    if isinstance(v, complex):
        return f'["c","{float.hex(v.real)}","{float.hex(v.imag)}"]'
    if isinstance(v, str):
        return f'["s","{_hex(v)}"]'
    if isinstance(v, bytes):
        return f'["b","{bytes.hex(v)}"]'
    if isinstance(v, bytearray):
        return f'["B","{bytearray.hex(v)}"]'
    number = _number(v)
    if number is not None:
        return number
    tag, items = _members(v)
    if tag == "o":
        return f'["o","{_hex(items)}"]'
    return f'["{tag}"' + "".join("," + encode(x, depth + 1) for x in items) + "]"


def _number(v: Any) -> str | None:
    """Fraction and Decimal (subclasses too) as plain data, read through the standard classes' own slots and
    methods: the harness rebuilds the value (tags Q and D); None for anything else."""
    fractions, decimal = sys.modules.get("fractions"), sys.modules.get("decimal")
    if fractions is not None and isinstance(v, fractions.Fraction):
        cls = fractions.Fraction
        n, d = cls.__dict__["_numerator"].__get__(v), cls.__dict__["_denominator"].__get__(v)
        return f'["Q","{int.__format__(n, "x")}","{int.__format__(d, "x")}"]'
    if decimal is not None and isinstance(v, decimal.Decimal):
        sign, digits, exponent = decimal.Decimal.as_tuple(v)
        text = "".join(map(str, digits))
        return f'["D","{int(sign)}","{text}","{exponent}"]'
    return None


def _members(v: Any) -> tuple[str, Any]:
    """A container's tag and members; an iterator's, as what it yields; else ("o", the type's name)."""
    for kind, tag, iterate in _CONTAINERS:
        if isinstance(v, kind):
            return tag, iterate(v)
    if not (hasattr(type(v), "__next__") and hasattr(type(v), "__iter__")):
        return "o", type(v).__name__
    items = list(itertools.islice(v, MAX_ITEMS + 1))
    return ("I", items) if len(items) <= MAX_ITEMS else ("o", "long iterator")


_CONTAINERS: tuple[tuple[type, str, Any], ...] = (
    (list, "l", list.__iter__),
    (tuple, "t", tuple.__iter__),
    (dict, "d", lambda d: itertools.chain.from_iterable(dict.items(d))),
    (set, "S", set.__iter__),
    (frozenset, "F", frozenset.__iter__),
)
