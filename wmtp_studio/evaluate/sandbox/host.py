"""What the sandbox needs from the host: its isolation tier, an interpreter for candidates, uids, the zygote.

The tier probe runs ``launch.py probe`` (as root it tries the namespaces and the chroot a run uses). The
candidates' interpreter must be executable by an unprivileged uid: a venv's interpreter under a private home
(/root is 0700) is not, so :func:`host` looks for the same Python version elsewhere (/usr/bin/python3.X, ...).
"""

from __future__ import annotations

import fcntl
import functools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from wmtp_studio.errors import StudioError

LAUNCHER = Path(__file__).with_name("launch.py")
DEFAULT_UID_BASE = 2_000_000_000  # far above login (1000+), container (100000+, 524288+) and systemd ranges
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class Host:
    tier: int  # 1 process, 2 uid, 3 namespace (sandbox.Tier)
    python: str  # an interpreter an unprivileged uid can execute (tiers 2-3), else the harness's own
    reason: str  # why the tier is not higher


@functools.cache
def host() -> Host:
    """Probe the host once per process."""
    if os.geteuid() != 0:
        return Host(1, sys.executable, "not running as root, so no dedicated uid")
    python = _python_for(DEFAULT_UID_BASE)
    if python is None:
        version = "{}.{}".format(*sys.version_info[:2])
        return Host(1, sys.executable, f"no python{version} that an unprivileged uid can execute")
    probe = [python, "-I", "-S", str(LAUNCHER), "probe", str(DEFAULT_UID_BASE)]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60, env=ENV, cwd="/", check=False)
    tier = int(done.stdout.strip() or 2)
    return Host(tier, python, "" if tier == 3 else "cannot create namespaces or the run's root")


def _python_for(uid: int) -> str | None:
    """An interpreter of our Python version that `uid` can run, stdlib and extension modules included."""
    version = "{}.{}".format(*sys.version_info[:2])
    names = [sys.executable, getattr(sys, "_base_executable", ""), os.path.realpath(sys.executable)]
    names += [
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
        shutil.which(f"python{version}"),
    ]
    check = "import json, math, sys; print('%d.%d' % sys.version_info[:2])"
    for name in dict.fromkeys(n for n in names if n and os.path.exists(n)):
        try:
            done = subprocess.run(
                [name, "-I", "-S", "-c", check],
                user=uid,
                group=uid,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=60,
                env=ENV,
                cwd="/",
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout.strip() == version:
            return name
    return None


def claim_uids(base: int, count: int) -> tuple[list[int], list[int]]:
    """`count` uids from `base` up, each held under an flock so no other sandbox on this host uses it meanwhile.

    Returns the uids and the lock fds (close them to release). Uids of real accounts are skipped: a run's
    processes are killed with kill(-1) as its uid.
    """
    lock_dir = Path("/run/wmtp-sandbox" if os.access("/run", os.W_OK) else tempfile.gettempdir())
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    uids: list[int] = []
    locks: list[int] = []
    for uid in range(base, base + 65536):
        if len(uids) == count:
            break
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        fd = os.open(lock_dir / f"wmtp-sandbox-uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        locks.append(fd)
        uids.append(uid)
    return uids, locks


class Zygote:
    """Client of the trusted process that forks every run (see launch.py); started once per Sandbox."""

    def __init__(self, python: str, tier: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [python, "-I", "-S", str(LAUNCHER), "serve", str(tier), str(theirs.fileno())]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env=ENV,
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
            self.process.wait()
            raise StudioError(f"the sandbox zygote failed to start: {hello.decode(errors='replace')}")
        self.socket = ours

    def submit(self, config: bytes, fds: list[int]) -> None:
        """Ask for one run: the config (JSON) and its fds [stdout, stderr, report, status, cancel]."""
        socket.send_fds(self.socket, [str(len(config)).encode()], fds)
        for i in range(0, len(config), 1 << 16):
            self.socket.send(config[i : i + (1 << 16)])

    def close(self) -> None:
        """The zygote exits on EOF; launchers still running see their cancel pipes close and stop."""
        self.socket.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
