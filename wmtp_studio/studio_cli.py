"""`wmtp-studio`: the headless studio commands (submit, compare, runs, show, cancel, retry, priority, workers,
db upgrade), and the dashboard: without arguments, or in web browsers with `serve` (both import Textual lazily).

Runs are only stored here (`queued`, frozen in runs/<id>/recipe.json); `wmtp-worker` claims them. Every command
opens the database of `Settings.from_env()` and upgrades it first. Recipes are validated (and comparison sets
expanded) before anything is written, so a bad recipe stores nothing. Bad input exits 2 with a one-paragraph
message. This module must stay free of torch/transformers/accelerate so that it starts fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from alembic.script import ScriptDirectory
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from wmtp_studio import store
from wmtp_studio.cli import SetOpt, err, fail
from wmtp_studio.database import MIGRATIONS
from wmtp_studio.errors import StudioError
from wmtp_studio.models import FINISHED_STATUSES, RUN_STATUSES, Run, Worker, utcnow
from wmtp_studio.recipe import load_recipe
from wmtp_studio.recipe_algorithms import ALGORITHMS
from wmtp_studio.settings import Settings
from wmtp_studio.submit import (
    QUICKSTART_ALGORITHMS,
    QUICKSTART_ALL_ALGORITHMS,
    QUICKSTART_DURATION,
    submit_comparison,
    submit_quickstart,
    submit_run,
    wake_workers,
)

studio_app = typer.Typer(
    name="wmtp-studio",
    help="WMTP Studio: queue training runs and comparison sets, and follow them (headless commands).",
    add_completion=False,
    pretty_exceptions_enable=False,
    invoke_without_command=True,
)
db_app = typer.Typer(help="The studio database.", no_args_is_help=True)
studio_app.add_typer(db_app, name="db")
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)  # pipes: no truncated cells

RecipeArg = Annotated[Path, typer.Argument(metavar="RECIPE", help="Recipe YAML file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
PriorityOpt = Annotated[int, typer.Option(help="Higher runs first; ties go to the oldest run.")]
GpusOpt = Annotated[int, typer.Option(min=0, help="GPUs each run needs (0: any worker, CPU included).")]
RunIdArg = Annotated[int, typer.Argument(metavar="RUN_ID")]


NoWorkerOpt = Annotated[
    bool,
    typer.Option(
        "--no-worker", help="Do not start an embedded CPU worker when no live worker is registered."
    ),
]


@studio_app.callback()
def _main(
    ctx: typer.Context,
    no_worker: NoWorkerOpt = False,
    no_quickstart: Annotated[
        bool,
        typer.Option("--no-quickstart", help="Do not offer the quickstart comparison to an empty studio."),
    ] = False,
) -> None:
    """Without a command: open the dashboard (starting an embedded worker if no live worker is registered)."""
    if ctx.invoked_subcommand is not None:
        return
    from wmtp_studio.tui.app import create_app

    try:
        app = create_app(embedded_worker=not no_worker, offer_quickstart=not no_quickstart)
    except StudioError as exc:
        raise fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise fail(str(store.database_error(Settings.from_env().database_url, exc))) from None
    app.run()


@studio_app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind: whoever reaches it controls the studio.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    public_url: Annotated[
        str | None, typer.Option(help="The URL browsers use, if not http://HOST:PORT (e.g. behind a proxy).")
    ] = None,
    no_worker: NoWorkerOpt = False,
) -> None:
    """Serve the dashboard to web browsers (one dashboard process per browser tab) until Ctrl+C."""
    from wmtp_studio.tui.serve import serve as serve_dashboard

    try:
        serve_dashboard(host=host, port=port, public_url=public_url, embedded_worker=not no_worker)
    except StudioError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


@contextmanager
def _studio(settings: Settings | None = None) -> Iterator[Engine]:
    """The upgraded studio database (of `settings`, default the environment's); StudioError and database errors
    become exit 2 with their message."""
    try:
        settings = settings or Settings.from_env()
        engine = store.make_engine(settings.database_url)
        store.upgrade(engine=engine)
        yield engine
    except StudioError as exc:
        raise fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise fail(str(store.database_error(Settings.from_env().database_url, exc))) from None


def _runs_dir() -> Path:
    return Settings.from_env().runs_dir


def run_row(run: Run) -> dict[str, Any]:
    """A run as JSON (without its recipe, which is in run_dir/recipe.json)."""
    return run.model_dump(mode="json", exclude={"recipe_json"})


def _age(when: datetime | None) -> str:
    if when is None:
        return "-"
    s = int((utcnow() - when).total_seconds())
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _print_runs(runs: Sequence[Run], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([run_row(r) for r in runs], indent=2))
        return
    table = Table()
    for name in ("id", "set", "algorithm", "seed", "status", "priority", "attempts", "gpus", "created"):
        table.add_column(name, justify="right" if name in ("id", "seed", "priority", "attempts") else "left")
    for r in runs:
        status = (
            f"{r.status} (cancel requested)" if r.cancel_requested and r.status == "running" else r.status
        )
        set_id = "-" if r.comparison_set_id is None else str(r.comparison_set_id)
        cells = (r.id, set_id, r.algorithm, r.seed, status, r.priority, r.attempts, r.gpus_requested)
        table.add_row(*map(str, cells), _age(r.created_at))
    out.print(table)


def _wake_workers(run_ids: list[int]) -> None:
    """Tell workers through the queue that runs are waiting; a queue that cannot be reached only warns."""
    warning = wake_workers(Settings.from_env(), run_ids)
    if warning:
        err.print(f"warning: {warning}")


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise StudioError(f"{option} {text!r}: expected comma-separated integers such as 0,1,2") from None


@studio_app.command()
def submit(
    recipe_path: RecipeArg,
    set_: SetOpt = None,
    priority: PriorityOpt = 0,
    gpus: GpusOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Queue one run of a recipe (with overrides) and print its id."""
    with _studio() as engine:
        recipe = load_recipe(recipe_path, set_ or [])
        run = submit_run(
            engine=engine, settings=Settings.from_env(), recipe=recipe, priority=priority, gpus=gpus
        )
    _wake_workers([run.id or 0])
    if as_json:
        _print_runs([run], True)
    else:
        typer.echo(run.id)


@studio_app.command()
def compare(
    recipe_path: RecipeArg,
    set_: SetOpt = None,
    algorithms: Annotated[
        str, typer.Option(help=f"Comma-separated algorithms (from {', '.join(ALGORITHMS)}).")
    ] = ",".join(ALGORITHMS),
    seeds: Annotated[str, typer.Option(help="Comma-separated training seeds.")] = "0",
    priority: PriorityOpt = 0,
    gpus: GpusOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Queue a comparison set: the recipe expanded over algorithms x seeds, runs differing only in those.
    Including rho1-wmtp needs a rho1-wmtp recipe (its reference model is kept for the set)."""
    with _studio() as engine:
        base = load_recipe(recipe_path, set_ or [])
        algos = [a.strip() for a in algorithms.split(",") if a.strip()]
        seed_list = _ints(seeds, "--seeds")
        cset, runs = submit_comparison(
            engine=engine,
            settings=Settings.from_env(),
            recipe=base,
            algorithms=algos,
            seeds=seed_list,
            priority=priority,
            gpus=gpus,
        )
    _wake_workers([r.id or 0 for r in runs])
    if as_json:
        _print_runs(runs, True)
        return
    typer.echo(f"comparison set {cset.id}: {base.name}, {len(algos)} algorithm(s) x {len(seed_list)} seed(s)")
    _print_runs(runs, False)


@studio_app.command(
    help="Queue the quickstart comparison: a tiny NTP base pre-trained on the generated task, then its fine-tunes "
    f"with ntp, baseline-mtp, critic-wmtp and rho1-wmtp, each evaluated on held-out problems ({QUICKSTART_DURATION}"
    " with one seed). With --report: run it to the end here and print its results as Markdown (the README's table)."
)
def quickstart(
    seeds: Annotated[
        int,
        typer.Option(
            help="Fine-tuning seeds per algorithm: 1 is fast; 3 or more show which differences are within "
            "seed noise (the base is trained once; each seed adds four fine-tunes)."
        ),
    ] = 1,
    as_json: JsonOpt = False,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Train and evaluate the quickstart headless in a fresh temporary studio home (a worker of its "
            "own), wait, and print the results table with the paired tests against ntp, the commit and the cores.",
        ),
    ] = False,
    existing: Annotated[
        bool,
        typer.Option(
            "--existing",
            help="With --report: use this studio's latest quickstart (queued now if there is none) instead.",
        ),
    ] = False,
    set_: SetOpt = None,
    all_algorithms: Annotated[
        bool,
        typer.Option(
            "--all-algorithms",
            help=f"Fine-tune with every algorithm ({', '.join(QUICKSTART_ALL_ALGORITHMS)}) instead of the four.",
        ),
    ] = False,
) -> None:
    if existing and not report:
        raise fail("--existing goes with --report")
    algorithms = QUICKSTART_ALL_ALGORITHMS if all_algorithms else QUICKSTART_ALGORITHMS
    if report:
        _quickstart_report(existing, set_ or [], seeds, algorithms)
        return
    with _studio() as engine:
        cset, runs = submit_quickstart(
            engine=engine,
            settings=Settings.from_env(),
            seeds=seeds,
            overrides=set_ or [],
            algorithms=algorithms,
        )
    _wake_workers([r.id or 0 for r in runs])
    if as_json:
        _print_runs(runs, True)
        return
    typer.echo(
        f"comparison set {cset.id}: {cset.name}, {seeds} seed(s), fine-tuned from run {runs[0].id} once it succeeds"
    )
    _print_runs(runs, False)


def _quickstart_report(existing: bool, overrides: list[str], seeds: int, algorithms: tuple[str, ...]) -> None:
    """Run (or find) a quickstart, wait for it with a worker, print the Markdown report on stdout."""
    from wmtp_studio import report

    settings = Settings.from_env() if existing else report.fresh_home()
    err.print(f"studio home: {settings.home}", highlight=False)
    with _studio(settings) as engine:
        markdown, set_id = report.run_and_report(
            engine, settings, existing=existing, overrides=overrides, seeds=seeds, algorithms=algorithms
        )
    typer.echo(markdown, nl=False)
    err.print(
        f"MLflow: `mlflow ui --backend-store-uri {settings.mlflow_uri}`, experiment wmtp/set-{set_id}-quickstart "
        "(MLflow 3.17 opens its GenAI views unless the URL ends in ?workflowType=machine_learning)",
        highlight=False,
    )
    if not existing:
        err.print(f"open it with: WMTP_HOME={settings.home} wmtp-studio (delete the folder when done)")


@studio_app.command("runs")
def runs_(
    status: Annotated[
        str | None, typer.Option(help=f"Only runs in this status ({'|'.join(RUN_STATUSES)}).")
    ] = None,
    set_id: Annotated[int | None, typer.Option("--set", help="Only runs of this comparison set.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first."""
    with _studio() as engine:
        if status is not None and status not in RUN_STATUSES:
            raise StudioError(f"--status {status!r}: expected one of {', '.join(RUN_STATUSES)}")
        runs = store.list_runs(engine=engine, status=status, comparison_set_id=set_id, limit=limit)
    _print_runs(runs, as_json)


def _get_run(engine: Engine, run_id: int) -> Run:
    run = store.get_run(engine=engine, run_id=run_id)
    if run is None:
        raise StudioError(f"no run with id {run_id} (list them with `wmtp-studio runs`)")
    return run


def _run_details(engine: Engine, run: Run) -> dict[str, Any]:
    """The run row, its recipe and diff, the latest value of each metric, and its evaluations."""
    latest = {
        name: {"step": p.step, "value": p.value, "seq": p.seq}
        for name, p in store.latest_metrics(engine=engine, run_id=run.id or 0).items()
    }
    evaluations = store.list_evaluations(engine=engine, run_id=run.id or 0)
    return run_row(run) | {
        "failure_reason": store.failure_reason(run),
        "recipe": json.loads(run.recipe_json),
        "latest_metrics": latest,
        "evaluations": [e.model_dump(mode="json") for e in evaluations],
    }


@studio_app.command()
def show(run_id: RunIdArg, as_json: JsonOpt = False) -> None:
    """One run: its state, how it differs from its comparison set's base, latest metrics and evaluations."""
    with _studio() as engine:
        details = _run_details(engine, _get_run(engine, run_id))
    if as_json:
        typer.echo(json.dumps(details, indent=2))
        return
    recipe = details["recipe"]
    typer.echo(f"run {details['id']}: {recipe['name']} ({details['algorithm']}, seed {details['seed']})")
    for key in ("status", "comparison_set_id", "priority", "attempts", "gpus_requested", "lease_owner"):
        typer.echo(f"  {key}: {details[key]}")
    for key in ("created_at", "started_at", "finished_at", "exit_code", "run_dir", "depends_on_run_id"):
        if details[key] is not None:
            typer.echo(f"  {key}: {details[key]}")
    if details["failure_reason"]:
        typer.echo(f"  failed: {details['failure_reason']}")
    if details["error_tail"]:
        typer.echo("  error:\n    " + "\n    ".join(details["error_tail"].splitlines()))
    diff = details["diff"]
    typer.echo("diff against the set's base recipe:" if diff else "diff: none (not part of a comparison set)")
    for path, (old, new) in (diff or {}).items():
        typer.echo(f"  {path}: {json.dumps(old)} -> {json.dumps(new)}")
    if details["latest_metrics"]:
        typer.echo("latest metrics:")
        for name, p in details["latest_metrics"].items():
            typer.echo(f"  {name}: {p['value']:.6g} (step {p['step']})")
    for e in details["evaluations"]:
        ci = f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]"
        typer.echo(
            f"  {e['benchmark']} pass@{e['k']}: {e['pass_at_k']:.4f} {ci} ({e['n_problems']} problems)"
        )


@studio_app.command()
def cancel(run_id: RunIdArg) -> None:
    """Cancel a queued or waiting run now; ask the worker of a running one to stop it."""
    with _studio() as engine:
        run = _get_run(engine, run_id)
        if run.status in FINISHED_STATUSES:
            raise StudioError(f"run {run_id} is already {run.status}; there is nothing to cancel")
        run = store.request_cancel(engine=engine, run_id=run_id)
    typer.echo(f"run {run_id}: " + ("cancel requested" if run.status == "running" else run.status))


@studio_app.command()
def retry(run_id: RunIdArg) -> None:
    """Put a failed or cancelled run back in the queue."""
    with _studio() as engine:
        run = store.retry_run(engine=engine, run_id=run_id)
    typer.echo(f"run {run_id}: {run.status}")


@studio_app.command()
def priority(run_id: RunIdArg, value: Annotated[int, typer.Argument(metavar="N")]) -> None:
    """Change a run's priority (higher runs first)."""
    with _studio() as engine:
        run = store.set_priority(engine=engine, run_id=run_id, priority=value)
    typer.echo(f"run {run_id}: priority {run.priority}")


def worker_row(w: Worker) -> dict[str, Any]:
    return w.model_dump(mode="json") | {
        "heartbeat_age_s": round((utcnow() - w.heartbeat_at).total_seconds(), 1),
        "alive": store.worker_alive(worker=w),
    }


@studio_app.command()
def workers(as_json: JsonOpt = False) -> None:
    """Registered `wmtp-worker` daemons, their slots and their last heartbeat (dead: silent for 30 s)."""
    with _studio() as engine:
        rows = store.list_workers(engine=engine)
    if as_json:
        typer.echo(json.dumps([worker_row(w) for w in rows], indent=2))
        return
    if not rows:
        typer.echo("no workers registered; start one with `wmtp-worker`")
        return
    table = Table()
    for name in ("id", "host", "pid", "state", "slots", "runs", "heartbeat", "version"):
        table.add_column(name)
    for w in rows:
        runs = ",".join(map(str, w.current_run_ids)) or "-"
        state = "alive" if store.worker_alive(worker=w) else "dead"
        slots = ",".join(w.slots)
        table.add_row(w.id, w.host, str(w.pid), state, slots, runs, _age(w.heartbeat_at), w.version)
    out.print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the studio database to the newest schema (every command also does this on start)."""
    with _studio():
        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    typer.echo(f"studio database at revision {head} (head)")


def studio_main() -> None:
    studio_app()
