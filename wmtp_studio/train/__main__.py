"""`python -m wmtp_studio.train --run-dir DIR [--resume]`: the entry workers launch through `accelerate launch`.

The run directory must hold `recipe.json` (as written by `wmtp train` or the studio). Exit codes: 0 done,
143 interrupted by SIGTERM (or orphaned by its worker) after a checkpoint, 2 bad input, 1 training failed,
75 another trainer owns the run directory (nothing was done). The trainer dies with its parent (see lifecycle.py).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from wmtp_studio.errors import StudioError, TrainingAborted
from wmtp_studio.rundir import EXIT_BUSY, RunDirBusy
from wmtp_studio.train.lifecycle import die_with_parent

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory holding recipe.json.")],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest complete checkpoint.")
    ] = False,
) -> None:
    """Train the run in --run-dir (its recipe.json), as the workers launch it."""
    die_with_parent()  # SIGTERM: checkpoint at the next step boundary and exit 143
    if not (run_dir / "recipe.json").is_file():
        print(f"error: {run_dir}/recipe.json does not exist", file=sys.stderr)
        raise typer.Exit(2)
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
    from wmtp_studio.train.setup import leave_process_group

    quiet_transformers()
    try:
        code = train(run_dir, resume=resume)
    except TrainingAborted as exc:
        print(f"error: training aborted: {exc}", file=sys.stderr)
        code = 1
    except RunDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_BUSY
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except OSError as exc:  # a full or read-only disk, a vanished directory: say which file, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        code = 2
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # model/, metrics, checkpoints written, MLflow ended
        leave_process_group(code)
    raise typer.Exit(code)


if __name__ == "__main__":
    app(prog_name="python -m wmtp_studio.train")
