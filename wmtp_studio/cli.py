"""Command lines: `wmtp` (train, validate) and `wmtp-studio` (the studio; arrives with the store and dashboard).

torch/transformers are imported inside the commands that need them, so `--help` and recipe validation are fast.
Bad input exits 2 with a one-paragraph message, never a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from wmtp_studio.errors import StudioError, TrainingAborted
from wmtp_studio.recipe import Recipe, load_recipe, recipe_from_json

app = typer.Typer(
    name="wmtp",
    help="Train and evaluate Weighted Multi-Token Prediction code models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Dotted override, e.g. optim.lr=3e-4 (repeatable).")
]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _freeze(recipe: Recipe, run_dir: Path, resume: bool) -> None:
    """Write recipe.json into the run dir; on resume, insist the recipe is the frozen one."""
    frozen = run_dir / "recipe.json"
    if resume:
        if not frozen.is_file():
            raise StudioError(f"--resume: {frozen} does not exist (nothing to resume)")
        old = recipe_from_json(frozen.read_text(), str(frozen))
        if old.sha256() != recipe.sha256():
            changed = [k for k in Recipe.model_fields if getattr(old, k) != getattr(recipe, k)]
            raise StudioError(
                f"--resume: the recipe differs from the one frozen in {frozen} "
                f"(sections: {', '.join(changed)}); resume with the same recipe and overrides"
            )
        return
    if frozen.exists():
        raise StudioError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    frozen.write_text(recipe.canonical_json())


@app.command()
def train(
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML file.")],
    set_: SetOpt = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<name>-<time>).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --run-dir from its latest checkpoint.")
    ] = False,
) -> None:
    """Train a recipe in this process (CPU or one GPU); for several GPUs use
    `accelerate launch -m wmtp_studio.train --run-dir DIR`."""
    try:
        recipe = load_recipe(recipe_path, set_ or [])
        if resume and run_dir is None:
            raise StudioError("--resume needs --run-dir")
        run_dir = (
            run_dir
            or Path(os.environ.get("WMTP_RUNS_DIR", "runs"))
            / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        _freeze(recipe, run_dir, resume)
    except StudioError as exc:
        raise fail(str(exc)) from None
    err.print(f"run directory: {run_dir}")
    code = _train_with_progress(run_dir, resume)
    if code == 0:
        err.print(f"done: model in {run_dir / 'model'}, metrics in {run_dir / 'metrics.jsonl'}")
    raise typer.Exit(code)


def _train_with_progress(run_dir: Path, resume: bool) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from wmtp_studio.train.loop import EXIT_INTERRUPTED, quiet_transformers
    from wmtp_studio.train.loop import train as run_training

    quiet_transformers()
    columns = (
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("train", total=None, info="preparing data and model")

        def on_step(step: int, total: int, m: dict[str, float]) -> None:
            bar.update(
                task, completed=step, total=total, info=f"loss {m['loss']:.4f}  {m['tokens_per_s']:.0f} tok/s"
            )

        failure: tuple[str, int] | None = None  # reported after the bar has stopped
        code = 1
        try:
            code = run_training(run_dir, resume=resume, progress=on_step)
        except TrainingAborted as exc:
            failure = (f"training aborted: {exc}", 1)
        except StudioError as exc:
            failure = (str(exc), 2)
        if failure is not None:
            bar.update(task, info="[red]failed")
    if failure is not None:
        raise fail(*failure)
    if code == EXIT_INTERRUPTED:
        err.print(f"interrupted: checkpoint saved; continue with --run-dir {run_dir} --resume")
    return code


@app.command()
def validate(
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML file.")],
    set_: SetOpt = None,
) -> None:
    """Validate a recipe (and overrides) and print it with every default filled in."""
    try:
        recipe = load_recipe(recipe_path, set_ or [])
    except StudioError as exc:
        raise fail(str(exc)) from None
    import yaml

    typer.echo(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), nl=False)
    err.print(f"ok: {recipe.algorithm.name}, {recipe.n_heads} head(s), sha256 {recipe.sha256()[:12]}")


def wmtp_main() -> None:
    app()


def studio_main() -> None:
    """`wmtp-studio`: the dashboard and the headless studio commands are not in this release yet."""
    err.print(
        "wmtp-studio: the studio (run store, queue and dashboard) is not in this release yet; "
        "train directly with `wmtp train RECIPE`."
    )
    sys.exit(2)
