"""The harness's view of one run in flight (`SandboxWatch`): it reads the run's output, report and status pipes,
enforces the time and output limits, judges each reported assert and decides the verdict (harness.py's docstring
describes how)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import selectors
import signal
import time
from collections.abc import Callable

from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.sandbox.judge import decode_report, explain, judge, raised
from wmtp_studio.evaluate.sandbox.result import Limits, Result, Tier
from wmtp_studio.evaluate.sandbox.verdict import Plan

_MAX_REPORT_BYTES = 32 << 20
_GRACE_S = 5.0  # how long a cancelled run may take to be cleaned up and reported
_PIPE_BYTES = 1 << 20  # output pipes' capacity and the most read at once
_DRAIN_S = 0.01  # past the cap, output is drained this often: at most ~100 MiB/s of it, at little cost to us


class SandboxWatch:
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
