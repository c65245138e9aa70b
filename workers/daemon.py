"""`wmtp-worker`: the GPU-host daemon. Not in this release yet; the command is declared so installs are stable."""

from __future__ import annotations

import sys


def main() -> None:
    print(
        "wmtp-worker: the worker daemon is not in this release yet; train directly with `wmtp train RECIPE`.",
        file=sys.stderr,
    )
    sys.exit(2)
