"""Command line `wmtp` (train, validate, eval, eval-samples, eval-lm, label); `wmtp-studio` is studio_cli.py.

torch/transformers are imported inside the commands that need them, so `--help` and recipe validation are fast.
Bad input exits 2 with a one-paragraph message, never a traceback.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from wmtp_studio.errors import StudioError, TrainingAborted
from wmtp_studio.recipe import Recipe, load_recipe, recipe_from_json
from wmtp_studio.rundir.results import EvalResults
from wmtp_studio.settings import Settings

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
    run_dir: Annotated[
        Path | None,
        typer.Option(help="Run directory (default: <home>/runs/<name>-<time>, or under WMTP_RUNS_DIR)."),
    ] = None,
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
        run_dir = run_dir or Settings.from_env().runs_dir / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        _freeze(recipe, run_dir, resume)
    except StudioError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:  # a read-only or full disk
        raise fail(
            f"cannot write the run directory: {exc.strerror or exc} ({exc.filename or run_dir})"
        ) from None
    err.print(f"run directory: {run_dir}")
    code = _train_with_progress(run_dir, resume)
    if code == 0:
        err.print(f"done: model in {run_dir / 'model'}, metrics in {run_dir / 'metrics.jsonl'}")
    raise typer.Exit(code)


def _train_with_progress(run_dir: Path, resume: bool) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from wmtp_studio.train.loop import EXIT_INTERRUPTED
    from wmtp_studio.train.loop import train as run_training
    from wmtp_studio.train.model import quiet_transformers

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
        except OSError as exc:  # a read-only or full disk while training
            failure = (f"{exc.strerror or exc} ({exc.filename or run_dir})", 2)
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


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise StudioError(f"--k {text!r}: expected comma-separated integers such as 1,10,100") from None
    if not ks:
        raise StudioError("--k needs at least one value")
    if any(k < 1 for k in ks):
        raise StudioError(f"--k {text}: every k must be at least 1 (pass@k over k samples)")
    return ks


def _progress_bar() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    )


def _print_passk(results: EvalResults, out: Path, requested: str | None = None) -> None:
    from rich.table import Table

    asked = ""
    if requested is not None and requested != results.benchmark:  # e.g. `generated`: the run's own family
        asked = f" (asked for {requested}: the run's own task)"
    err.print(
        f"{results.benchmark}{asked}: {results.n_problems} problems, isolation tier {results.isolation_tier}"
    )
    table = Table()
    for col in ("k", "pass@k", "95% CI"):
        table.add_column(col, justify="right")
    for p in results.pass_at_k:
        table.add_row(str(p.k), f"{p.value:.4f}", f"[{p.ci_low:.4f}, {p.ci_high:.4f}]")
    Console().print(table)
    err.print(f"samples and results in {out}")


TierOpt = Annotated[
    str | None, typer.Option(help="Refuse to run below this isolation tier: process|uid|namespace.")
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0.1,
        help="Seconds per program (default: the benchmark's protocol, humaneval/mbpp 3).",
    ),
]
MemoryOpt = Annotated[
    int | None, typer.Option("--memory", min=64, help="Address space per program, MiB (default 1024).")
]


@app.command("eval")
def eval_(
    target: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT_OR_RUN_DIR", help="Run, checkpoint or model directory.")
    ],
    benchmark: Annotated[
        str,
        typer.Option(
            help="humaneval | mbpp[:PATH] | jsonl:PATH | codecontests:PATH | generated[:FAMILY[:N]]"
        ),
    ],
    n: Annotated[int, typer.Option(min=1, help="Samples per problem.")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.95,
    k: Annotated[str, typer.Option(help="Comma-separated k values.")] = "1",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N problems.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: RUN/eval/BENCHMARK).")] = None,
    require_tier: TierOpt = None,
    slots: Annotated[int | None, typer.Option(min=1, help="Parallel sandbox slots.")] = None,
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
) -> None:
    """Sample completions, run them in the sandbox and report pass@k with 95% bootstrap CIs."""
    from wmtp_studio.evaluate.run import EvalRequest, evaluate_model

    try:
        req = EvalRequest(
            target,
            benchmark,
            n,
            temperature,
            top_p,
            _ks(k),
            limit,
            max_new_tokens,
            batch_size,
            seed,
            out,
            require_tier,
            slots,
            timeout,
            memory,
        )
        with _progress_bar() as bar:
            tasks: dict[str, Any] = {}

            def on_progress(phase: str, advance: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.advance(tasks[phase], advance)

            results, out_dir = evaluate_model(req, on_progress)
        stored = _record_in_studio(target, results, out_dir / "samples.jsonl")
    except StudioError as exc:
        raise fail(str(exc)) from None
    _print_passk(results, out_dir, requested=benchmark)
    if stored is not None:
        err.print(
            f"stored with studio run {stored}: its Evaluations tab, and MLflow once a worker forwards it"
        )


def _record_in_studio(target: Path, results: EvalResults, samples: Path) -> int | None:
    """If `target` is a studio run's directory (`<WMTP_RUNS_DIR>/<id>`), store the evaluation just made (its new
    metrics.jsonl lines and results) as the run's supervisor would have; returns the run id. Files -> database,
    as everywhere in the studio, only done here because no supervisor follows a finished run."""
    settings = Settings.from_env()
    run_dir = target.resolve()
    if not (run_dir / "recipe.json").is_file() or run_dir.parent != settings.runs_dir.resolve():
        return None
    sqlite_file = settings.database_url.removeprefix("sqlite:///")
    if not run_dir.name.isdigit() or (
        sqlite_file != settings.database_url and not Path(sqlite_file).exists()
    ):
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from wmtp_studio import store
    from wmtp_studio.rundir.metrics import read_metrics

    try:
        engine = store.make_engine(settings.database_url)
        store.upgrade(engine=engine)
        run = store.get_run(engine=engine, run_id=int(run_dir.name))
        if run is None or Path(run.run_dir).resolve() != run_dir:
            return None
        after = store.last_seq(engine=engine, run_id=run.id or 0)
        lines = [ln for ln in read_metrics(run_dir / "metrics.jsonl") if ln.seq > after]
        store.record_later_evaluation(
            engine=engine, run_id=run.id or 0, lines=lines, results=results, samples=samples.resolve()
        )
    except SQLAlchemyError as exc:  # the results are on disk either way
        err.print(f"warning: not stored in the studio database ({exc.__class__.__name__}: {exc})")
        return None
    return run.id


@app.command("eval-samples")
def eval_samples(
    samples: Annotated[
        Path, typer.Argument(metavar="SAMPLES.jsonl", help="human-eval format: task_id, completion.")
    ],
    benchmark: Annotated[str, typer.Option(help="Benchmark the samples answer (e.g. humaneval).")],
    k: Annotated[str, typer.Option(help="Comma-separated k values.")] = "1",
    out: Annotated[Path | None, typer.Option(help="Output directory (default: SAMPLES-results).")] = None,
    require_tier: TierOpt = None,
    slots: Annotated[int | None, typer.Option(min=1)] = None,
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
    failures: Annotated[
        bool, typer.Option("--failures", help="Also print why each failed sample failed.")
    ] = False,
) -> None:
    """Judge completions produced elsewhere; print per-problem results and pass@k."""
    from rich.table import Table

    from wmtp_studio.evaluate.run import evaluate_samples

    try:
        with _progress_bar() as bar:
            task = bar.add_task("execute", total=None)
            results, out_dir = evaluate_samples(
                samples,
                benchmark,
                _ks(k),
                out,
                require_tier,
                slots,
                lambda _p, adv, total: bar.update(task, advance=adv, total=total),
                timeout,
                memory,
            )
    except StudioError as exc:
        raise fail(str(exc)) from None
    if failures:
        _print_failures(out_dir / "samples.jsonl")
    table = Table(title="per problem")
    for col in ("task_id", "samples", "passed"):
        table.add_column(col)
    for task_id, r in results.per_problem.items():
        table.add_row(task_id, str(r.n), str(r.c))
    Console().print(table)
    _print_passk(results, out_dir)


def _print_failures(path: Path) -> None:
    """A table of the failed samples in a samples.jsonl: status, the failed assert or exception, stderr's end."""
    from rich.table import Table
    from rich.text import Text

    from wmtp_studio.rundir.results import read_samples

    table = Table(title="failed samples", show_lines=True)
    for col in ("task_id", "#", "status", "line", "why", "expected", "got", "stderr (end)"):
        table.add_column(col, overflow="fold")
    shown = 0
    for v in read_samples(path):
        if v.passed:
            continue
        shown += 1
        why = "; ".join(filter(None, [v.detail, "" if v.exception in v.detail else v.exception]))
        stderr_end = (v.stderr.strip().splitlines() or [""])[-1]
        cells = [
            v.task_id,
            str(v.index),
            v.status,
            str(v.line or ""),
            why,
            v.expected,
            v.got,
            stderr_end[-200:],
        ]
        table.add_row(*map(Text, cells))  # Text: the program's output is not markup
    Console().print(table if shown else "no failed samples")


@app.command()
def label(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA.jsonl",
            help="Lines with prompt, tests, optional completion; or an MBPP file (its train split is labelled).",
        ),
    ],
    out: Annotated[Path, typer.Option(help="Labelled JSONL to write.")],
    model: Annotated[Path | None, typer.Option(help="Sample candidates from this model first.")] = None,
    n: Annotated[int, typer.Option(min=1, help="Candidates per prompt with --model.")] = 4,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.8,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    require_tier: TierOpt = None,
    slots: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Run candidate solutions against their tests and write `is_correct` (critic-wmtp's verifiable rewards)."""
    from wmtp_studio.evaluate.label import label_file

    try:
        counts = label_file(
            data,
            out,
            model=model,
            n=n,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            require_tier=require_tier,
            slots=slots,
        )
    except StudioError as exc:
        raise fail(str(exc)) from None
    err.print(f"labelled {counts['rows']} rows ({counts['correct']} correct) into {out}")


@app.command("eval-lm")
def eval_lm(
    target: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT_OR_RUN_DIR", help="Run, checkpoint or model directory.")
    ],
    data: Annotated[str, typer.Option(help="jsonl:PATH | code_dir:PATH | mbpp:PATH | generated[:FAMILY]")],
    limit: Annotated[int | None, typer.Option(min=1, help="At most N examples.")] = None,
    seq_len: Annotated[int, typer.Option(min=8)] = 1024,
    speed_prompts: Annotated[int, typer.Option(min=0, help="Prompts timed for decoding speed.")] = 10,
) -> None:
    """Perplexity, per-head CE and top-1 accuracy on held-out text, and greedy vs self-speculative tokens/s."""
    import json

    from wmtp_studio.evaluate.lm import evaluate_lm

    try:
        results = evaluate_lm(target, data, limit=limit, seq_len=seq_len, speed_prompts=speed_prompts)
    except StudioError as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(results, indent=2))


def wmtp_main() -> None:
    app()
