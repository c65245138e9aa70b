"""Hostile programs against the sandbox: each must end with the right verdict and leave no trace.

After every program: the harness and its zygote are alive, canary files (in a directory outside the sandbox and in
the harness's cwd) are untouched, the harness's environment is unchanged and its secret never shows up in the
output, listeners (TCP on 127.0.0.1, a unix socket file, an abstract unix socket) got no connection, nothing was
left in the host's /tmp, /var/tmp or /dev/shm, and no process (of the run's uid, carrying the test's marker, or
with a run's HOME) nor System V IPC object is left. Programs use tokens the test fills in: @CANARY@, @CWD_CANARY@,
@PORT@, @UNIX@, @MARKER@ (a per-test string), @TESTFILE@. The suite runs at every tier this host provides; an
attack that needs a stronger tier than the one in force to be stopped (its `min_tier`) is skipped there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wmtp_studio.evaluate.sandbox import Limits, Sandbox, Tier, detect_tier

P, U, N = Tier.PROCESS, Tier.UID, Tier.NAMESPACE
WRONG = "def f(x):\n    return 0\n"  # attacks try to pass `assert f(2) == 4` with this wrong solution
TEST = "assert f(2) == 4\n"


@dataclass(frozen=True)
class Attack:
    name: str
    program: str
    verdicts: tuple[str, ...]
    min_tier: Tier = P


ATTACKS = [
    Attack("fork_bomb", '"""Fork until the process table is full."""\nimport os\nwhile True:\n    os.fork()\n',
           ("failed", "timeout"), U),
    Attack("memory_bomb", '"""Allocate without end."""\nx = []\nwhile True:\n    x.append(" " * 10**7)\n', ("oom",)),
    Attack("infinite_loop", '"""Never finish."""\nwhile True:\n    pass\n', ("timeout",)),
    Attack("cpu_spin_thread", '"""Spin in a thread, wait on it forever."""\nimport threading\n'
           "def spin():\n    while True:\n        pass\nt = threading.Thread(target=spin)\nt.start()\nt.join()\n" + TEST,
           ("timeout",)),
    # Output past the cap is dropped, not a failure (as in the official harnesses): a flood runs to its timeout.
    Attack("huge_stdout", '"""Flood stdout."""\nwhile True:\n    print("x" * 10000)\n', ("timeout",)),
    Attack("huge_stderr", '"""Flood stderr."""\nimport sys\nwhile True:\n    sys.stderr.write("e" * 10000)\n',
           ("timeout",)),
    Attack("flood_then_fail", '"""Flood stdout past the cap, then fail the test."""\nfor _ in range(10**4):\n'
           '    print("x" * 1000)\n' + WRONG + TEST, ("failed",)),
    Attack("write_canary_absolute", '"""Overwrite a file outside the sandbox by absolute path."""\n'
           'open("@CANARY@", "w").write("pwned")\n' + WRONG + TEST, ("failed",), U),
    Attack("write_dotdot_escape", '"""Climb out of the temp dir with ../ and write next to the canary."""\n'
           "import os\nup = '../' * 20\nopen(up + '@CWD_CANARY@', 'a').write('pwned')\n" + WRONG + TEST,
           ("failed",), U),
    Attack("delete_canary", '"""Delete files outside the sandbox."""\nimport os\nos.remove("@CANARY@")\n'
           'os.remove("@CWD_CANARY@")\n' + WRONG + TEST, ("failed",), U),
    Attack("print_environment", '"""Print the environment, hoping for the harness secret."""\nimport os\n'
           "print(dict(os.environ))\nassert 'WMTP_TEST_SECRET' in os.environ\n", ("failed",)),
    Attack("parent_environ", '"""Read /proc/<ppid>/environ and every other environ in /proc."""\nimport os\n'
           "for pid in [os.getppid()] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
           "    try:\n        print(open(f'/proc/{pid}/environ', 'rb').read())\n    except OSError:\n        pass\n"
           "assert b'WMTP_TEST_SECRET' in open(f'/proc/{os.getppid()}/environ', 'rb').read()\n", ("failed",), U),
    Attack("local_listener", '"""Connect to a service on the loopback interface."""\nimport socket\n'
           "socket.create_connection(('127.0.0.1', @PORT@), timeout=2).sendall(b'hi')\n" + WRONG + TEST,
           ("failed",)),
    Attack("dns_and_external", '"""Resolve a name and reach an outside address."""\nimport socket\n'
           "try:\n    socket.getaddrinfo('example.com', 80)\nexcept OSError:\n    pass\n"
           "socket.create_connection(('1.1.1.1', 53), timeout=2)\n" + WRONG + TEST, ("failed",)),
    Attack("kill_parent", '"""Kill the process that started us."""\nimport os\nos.kill(os.getppid(), 9)\n'
           + WRONG + TEST, ("failed",), U),
    Attack("kill_everything", '"""kill(-1): every process we may signal."""\nimport os\nos.kill(-1, 9)\n'
           + WRONG + TEST, ("failed",), U),
    Attack("kill_pythons", '"""SIGKILL every process in /proc that we can see, harness included."""\nimport os\n'
           "for p in os.listdir('/proc'):\n    if p.isdigit() and int(p) != os.getpid():\n"
           "        try:\n            os.kill(int(p), 9)\n        except OSError:\n            pass\n" + WRONG + TEST,
           ("failed",), U),
    Attack("ignore_sigterm", '"""Ignore SIGTERM (and SIGINT, SIGHUP), then sleep."""\nimport signal, time\n'
           "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\n"
           "time.sleep(100)\n", ("timeout",)),
    Attack("setsid_grandchild", '"""Double fork + setsid: a grandchild that outlives the program."""\n'
           "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
           "        while True:\n            time.sleep(1)\n    os._exit(0)\n" + WRONG + TEST, ("failed",)),
    Attack("shell_background", '"""Spawn /bin/sh to background a process."""\nimport subprocess, time\n'
           "subprocess.Popen(['/bin/sh', '-c', 'nohup sh -c \"while :; do sleep 1; done # @MARKER@\" >/dev/null 2>&1 &'])\n"
           "time.sleep(0.5)\n" + WRONG + TEST, ("failed",)),
    Attack("daemon_thread", '"""A daemon thread that keeps running and writing."""\nimport threading, time\n'
           "def busy():\n    while True:\n        open('f.txt', 'a').write('x')\n        time.sleep(0.01)\n"
           "threading.Thread(target=busy, daemon=True).start()\ntime.sleep(0.2)\n" + WRONG + TEST, ("failed",)),
    Attack("fake_eq_object", '"""Return an object whose __eq__ is always True."""\n'
           "class Anything:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
           "def f(x):\n    return Anything()\n" + TEST, ("failed",)),
    Attack("int_subclass_eq", '"""An int subclass with a forged __eq__ (and repr)."""\nclass Four(int):\n'
           "    def __eq__(self, other):\n        return True\n    def __repr__(self):\n        return '4'\n"
           "def f(x):\n    return Four(0)\n" + TEST, ("failed",)),
    Attack("patched_assertion", '"""Replace AssertionError and neuter assert through builtins."""\nimport builtins\n'
           "class Quiet(BaseException):\n    pass\nbuiltins.AssertionError = Quiet\n"
           "builtins.__dict__['assert'] = lambda *a: None\n" + WRONG + TEST, ("failed",)),
    Attack("patched_isinstance_print", '"""Redefine isinstance, len and print for everyone."""\nimport builtins\n'
           "builtins.isinstance = lambda *a: True\nbuiltins.len = lambda x: 4\nbuiltins.print = lambda *a, **k: None\n"
           + WRONG + "assert isinstance(f(2), str) and len(f(2)) == 4\n", ("failed",)),
    Attack("patched_exit", '"""Monkeypatch sys.exit and os._exit, then fail."""\nimport os, sys\n'
           "sys.exit = lambda *a: None\nos._exit = lambda *a: None\n" + WRONG + TEST, ("failed",)),
    Attack("frame_walk_done", '"""Walk frames to the wrapper, steal the nonce, write a completion, exit 0."""\n'
           "import sys, os\nframe = sys._getframe()\nwhile frame is not None:\n"
           "    if 'nonce' in frame.f_locals:\n"
           "        os.write(3, ('{\"done\":\"%s\"}\\n' % frame.f_locals['nonce']).encode())\n        os._exit(0)\n"
           "    frame = frame.f_back\n" + WRONG + TEST, ("failed",)),
    Attack("frame_walk_probe", '"""Walk frames and replace the reporting function in every namespace."""\n'
           "import sys, inspect\nfor info in inspect.stack():\n    g = info.frame.f_globals\n"
           "    for name in list(g):\n        if 'probe' in name:\n            g[name] = lambda *a: None\n"
           + WRONG + TEST, ("failed",)),
    Attack("gc_token", '"""Search gc.get_objects() for the nonce, forge completion, exit 0."""\nimport gc, os, re\n'
           "for o in gc.get_objects():\n    if isinstance(o, dict):\n        for v in list(o.values()):\n"
           "            if isinstance(v, str) and re.fullmatch('[0-9a-f]{32}', v):\n"
           "                os.write(3, ('{\"done\":\"%s\"}\\n' % v).encode())\nos._exit(0)\n" + WRONG + TEST,
           ("failed",)),
    Attack("forge_reports", '"""Write forged probe reports for every plausible value, then exit 0."""\nimport os\n'
           "for n in range(-50, 50):\n    os.write(3, b'{\"s\":0,\"v\":[[\"i\",\"%x\"]]}\\n' % n)\n"
           "os.write(3, b'{\"s\":0,\"v\":[true]}\\n')\nos._exit(0)\n" + WRONG + TEST, ("failed",)),
    Attack("settrace_skip", '"""A trace hook that jumps over the assert line."""\nimport sys\n'
           "def tracer(frame, event, arg):\n    if event == 'line' and frame.f_lineno == LINE:\n"
           "        try:\n            frame.f_lineno = LINE + 1\n        except ValueError:\n            pass\n"
           "    return tracer\n" + WRONG + "LINE = sys._getframe().f_lineno + 3\nsys.settrace(tracer)\n"
           "sys._getframe().f_trace = tracer\n" + TEST + "print('skipped')\n", ("failed",)),
    Attack("early_sys_exit", '"""sys.exit(0) before the asserts."""\nimport sys\n' + WRONG + "sys.exit(0)\n" + TEST,
           ("failed",)),
    Attack("early_os_exit", '"""os._exit(0) before the asserts."""\nimport os\n' + WRONG + "os._exit(0)\n" + TEST,
           ("failed",)),
    Attack("exit_in_del_atexit", '"""SystemExit(0) from __del__ and os._exit(0) from atexit."""\nimport atexit, os\n'
           "atexit.register(lambda: os._exit(0))\nclass Bye:\n    def __del__(self):\n        raise SystemExit(0)\n"
           "b = Bye()\ndel b\n" + WRONG + TEST, ("failed",)),
    Attack("close_std_fds", '"""Close stdout, stderr and the report channel, then fail."""\nimport os\n'
           "for fd in (1, 2, 3):\n    os.close(fd)\n" + WRONG + TEST, ("failed",)),
    Attack("marker_every_fd", '"""Write fake success markers to every fd 0..255, then exit 0."""\nimport os\n'
           "fake = b'{\"done\":\"' + b'0' * 32 + b'\"}\\npassed\\n{\"s\":0,\"v\":[[\"i\",\"4\"]]}\\n'\n"
           "for fd in range(256):\n    try:\n        os.write(fd, fake)\n    except OSError:\n        pass\n"
           "os._exit(0)\n" + WRONG + TEST, ("failed",)),
    Attack("ctypes_exit_kill", '"""libc exit(0) and kill() through ctypes."""\nimport ctypes, os\n'
           "libc = ctypes.CDLL(None)\nlibc.kill(os.getppid(), 9)\nlibc.kill(-1, 9)\nlibc.exit(0)\n" + WRONG + TEST,
           ("failed",), U),
    Attack("alarm_exit", '"""A SIGALRM handler that exits 0 while the asserts wait."""\nimport signal, os, time\n'
           "signal.signal(signal.SIGALRM, lambda *a: os._exit(0))\nsignal.alarm(1)\n" + WRONG
           + "time.sleep(5)\n" + TEST, ("failed", "timeout")),
    Attack("raise_rlimits", '"""Raise resource limits back up, then allocate."""\nimport resource\n'
           "inf = resource.RLIM_INFINITY\nfor r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NPROC):\n"
           "    resource.setrlimit(r, (inf, inf))\n" + WRONG + TEST, ("failed",), U),
    Attack("fd_exhaustion", '"""Open files until no descriptor is left, then fail."""\nfiles = []\n'
           "try:\n    while True:\n        files.append(open('/dev/null'))\nexcept OSError:\n    pass\n" + WRONG + TEST,
           ("failed",)),
    Attack("no_newline_output", '"""Write without a newline, then spin."""\nimport sys\nsys.stdout.write("z" * 500)\n'
           "sys.stdout.flush()\nwhile True:\n    sys.stdout.write('z')\n", ("timeout",)),
    Attack("antigravity", '"""Imports that try the network: antigravity, urllib."""\nimport antigravity\n'
           "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)\n" + WRONG + TEST,
           ("failed",)),
    Attack("tmp_litter", '"""Leave files in every world-writable directory."""\nimport os\n'
           "for d in ('/tmp', '/var/tmp', '/dev/shm'):\n    try:\n        open(f'{d}/@MARKER@', 'w').write('x')\n"
           "    except OSError:\n        pass\n" + WRONG + TEST, ("failed",), U),
    Attack("unix_sockets", '"""Reach the host through a unix socket file and an abstract unix socket."""\n'
           "import socket\nfor address in ('@UNIX@', '\\0@MARKER@'):\n    s = socket.socket(socket.AF_UNIX)\n"
           "    try:\n        s.connect(address)\n        s.sendall(b'hi')\n    except OSError:\n        pass\n"
           + WRONG + TEST, ("failed",), N),
    Attack("read_test_data", '"""Read the expected values from the test file on disk and return them."""\n'
           "import re\nsource = open('@TESTFILE@').read()\n"
           "answer = int(re.search(r'assert f\\(2\\) == (\\d+)', source).group(1))\n"
           "def f(x):\n    return answer\n" + TEST, ("failed",), N),
    Attack("shadow_builtin", '"""Rebind abs at module level so a tolerance check always holds."""\n'
           "abs = lambda x: 0\n" + WRONG + "assert abs(f(2) - 4) < 1e-9\n", ("failed",)),
    Attack("sysv_ipc_litter", '"""Leave a System V shared memory segment behind (via ctypes)."""\nimport ctypes\n'
           "libc = ctypes.CDLL(None)\nassert libc.shmget(0, 1 << 20, 0o1600) >= 0\n" + WRONG + TEST, ("failed",), N),
    Attack("report_flood", '"""Flood the report channel."""\nimport os\nwhile True:\n    os.write(3, b"x" * 65536)\n',
           ("failed",)),
    # Benign controls: these must pass.
    Attack("control_helper_class", '"""A correct solution with a helper class."""\nclass Stack:\n'
           "    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n"
           "def f(x):\n    s = Stack()\n    s.push(x)\n    s.push(x)\n    return sum(s.items)\n" + TEST, ("passed",)),
    Attack("control_prints_under_cap", '"""Prints a lot, but under the cap."""\nfor i in range(500):\n'
           "    print('line', i)\ndef f(x):\n    return 2 * x\n" + TEST, ("passed",)),
    Attack("control_recursion", '"""Recursion."""\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n'
           "def f(x):\n    return fib(x + 1) + 2\n" + TEST + "assert fib(20) == 6765\n", ("passed",)),
]  # fmt: skip


# Every tier this host provides: the lower ones run the attacks they are meant to stop.
TIERS = [t for t in Tier if t <= detect_tier()]


@pytest.fixture(scope="module", params=TIERS, ids=[t.name for t in TIERS])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    limits = Limits(timeout_s=2.0, memory_mb=512, max_output_bytes=10_000, max_procs=32)
    with Sandbox(tier=request.param, slots=2, limits=limits) as box:
        yield box


@dataclass
class World:
    canary: Path
    cwd_canary: Path
    listeners: list[socket.socket]  # TCP on 127.0.0.1, a unix socket file anyone may use, an abstract one
    marker: str


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    outside = Path(tempfile.mkdtemp(prefix="wmtp-canary-"))
    harness_cwd = Path(tempfile.mkdtemp(prefix="wmtp-harness-cwd-"))
    for d in (outside, harness_cwd):
        d.chmod(0o755)  # readable by anyone, as most of a filesystem is
    (outside / "canary.txt").write_text("canary")
    (harness_cwd / "canary.txt").write_text("canary")
    monkeypatch.chdir(harness_cwd)
    monkeypatch.setenv("WMTP_TEST_SECRET", "s3cr3t-" + secrets.token_hex(8))
    marker = f"wmtp-{secrets.token_hex(8)}"
    listeners = [socket.create_server(("127.0.0.1", 0))]
    for address in (str(outside / "sock"), f"\0{marker}"):
        listeners.append(socket.socket(socket.AF_UNIX))
        listeners[-1].bind(address)
        listeners[-1].listen()
    (outside / "sock").chmod(0o777)
    for listener in listeners:
        listener.setblocking(False)
    yield World(outside / "canary.txt", harness_cwd / "canary.txt", listeners, marker)
    for listener in listeners:
        listener.close()
    for d in (outside, harness_cwd):
        shutil.rmtree(d)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack(attack: Attack, sandbox: Sandbox, world: World) -> None:
    if sandbox.tier < attack.min_tier:
        pytest.skip(f"needs tier {attack.min_tier.name}; this sandbox runs at {sandbox.tier.name}")
    program = (
        attack.program.replace("@CANARY@", str(world.canary))
        .replace("@CWD_CANARY@", str(world.cwd_canary).lstrip("/"))
        .replace("@PORT@", str(world.listeners[0].getsockname()[1]))
        .replace("@UNIX@", str(world.canary.with_name("sock")))
        .replace("@MARKER@", world.marker)
        .replace("@TESTFILE@", __file__)
    )
    environ = dict(os.environ)
    result = sandbox.run(program)
    assert result.status in attack.verdicts, (result.status, result.detail, result.stderr[-2000:])
    assert result.passed == (attack.verdicts == ("passed",))
    assert result.tier == sandbox.tier
    # no damage, no leak, nothing left
    assert sandbox._zygote is not None and sandbox._zygote.process.poll() is None
    assert world.canary.read_text() == "canary" and world.cwd_canary.read_text() == "canary"
    assert dict(os.environ) == environ
    assert os.environ["WMTP_TEST_SECRET"] not in result.stdout + result.stderr
    for listener in world.listeners:
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert not any(Path(d, world.marker).exists() for d in ("/tmp", "/var/tmp", "/dev/shm"))
    assert _leftovers(sandbox.uids, world.marker) == []
    assert _ipc_leftovers(sandbox.uids) == []


def test_harness_survives_and_keeps_judging(sandbox: Sandbox) -> None:
    """After the whole suite, the same sandbox still judges correctly."""
    good, bad = "def f(x):\n    return 2 * x\n" + TEST, WRONG + TEST
    assert [r.status for r in sandbox.run_many([good, bad] * 3)] == ["passed", "failed"] * 3


def _leftovers(uids: tuple[int, ...], marker: str) -> list[str]:
    """Processes owned by one of the sandbox's uids, carrying the marker, or with a run's HOME in their environment."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes() if os.geteuid() == 0 else b""
        except OSError:
            continue
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        owned = any(int(u) in uids for u in uid_line.split()[1:])
        a_run = b"HOME=/tmp/wmtp-sandbox-" in environ or b"HOME=/tmp/sandbox\0" in environ
        if owned or a_run or marker in cmdline:
            found.append(f"{pid}: {cmdline!r} {uid_line}")
    return found


def _ipc_leftovers(uids: tuple[int, ...]) -> list[str]:
    """System V IPC objects owned by one of the sandbox's uids."""
    found = []
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            header, *rows = f.read().splitlines()
        column = header.split().index("uid")
        found += [f"{kind}: {row}" for row in rows if int(row.split()[column]) in uids]
    return found


def test_at_least_30_attacks_and_3_controls() -> None:
    controls = [a for a in ATTACKS if a.verdicts == ("passed",)]
    assert len(ATTACKS) - len(controls) >= 30 and len(controls) == 3
    assert len({a.name for a in ATTACKS}) == len(ATTACKS)
    assert all(a.program.startswith('"""') for a in ATTACKS)


def test_the_detected_tier_is_among_those_attacked() -> None:
    assert TIERS[-1] == detect_tier()
