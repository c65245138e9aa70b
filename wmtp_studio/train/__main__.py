"""`python -m wmtp_studio.train --run-dir DIR [--resume]`: the entry workers launch through `accelerate launch`.

The run directory must hold `recipe.json` (as written by `wmtp train` or the studio). Exit codes: 0 done,
143 interrupted by SIGTERM (or orphaned by its worker) after a checkpoint, 2 bad input, 1 training failed,
75 another trainer owns the run directory (nothing was done). The trainer dies with its parent (see lifecycle.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from wmtp_studio.errors import StudioError, TrainingAborted
from wmtp_studio.rundir import EXIT_BUSY, RunDirBusy
from wmtp_studio.train.lifecycle import die_with_parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmtp_studio.train", description=__doc__)
    parser.add_argument("--run-dir", required=True, type=Path, help="run directory holding recipe.json")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    args = parser.parse_args(argv)
    die_with_parent()  # SIGTERM: checkpoint at the next step boundary and exit 143
    if not (args.run_dir / "recipe.json").is_file():
        print(f"error: {args.run_dir}/recipe.json does not exist", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Progress lines go to stderr (the worker's train.log, the dashboard's Log tab) as they happen: logging
    # flushes each record, and stdout is made line-buffered for anything printed.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    from wmtp_studio.train.loop import train
    from wmtp_studio.train.model import quiet_transformers

    quiet_transformers()
    try:
        return train(args.run_dir, resume=args.resume)
    except TrainingAborted as exc:
        print(f"error: training aborted: {exc}", file=sys.stderr)
        return 1
    except RunDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full or read-only disk, a vanished directory: say which file, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
