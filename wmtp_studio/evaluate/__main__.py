"""`python -m wmtp_studio.evaluate --run-dir DIR [--benchmark B --out OUT]`: a trained run's evaluations, the
entry workers launch after training (as they launch `python -m wmtp_studio.train`).

The run directory must hold recipe.json and a model (or a checkpoint). Each benchmark of the recipe's
`eval.benchmarks` (or only `--benchmark`) is sampled with the recipe's `eval` settings and judged in the sandbox
under its limits; results.json and samples.jsonl go to `eval/<i>-<benchmark>/` (or `--out`) and `eval` lines to
metrics.jsonl. Nothing is stored in the studio database: whoever launched it records the results (the worker,
with `store.record_results`). Exit codes: 0 done, 2 bad input (no traceback), 1 evaluation failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.run import EvalRequest, Progress, evaluate_model
from wmtp_studio.recipe import Recipe, recipe_from_json
from wmtp_studio.rundir import RECIPE
from wmtp_studio.rundir.results import EvalResults, eval_dir

log = logging.getLogger("wmtp.evaluate")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def recipe_request(recipe: Recipe, run_dir: Path, benchmark: str, out: Path) -> EvalRequest:
    """The evaluation of `benchmark` the recipe asks for: its `eval` sampling settings and sandbox limits (none:
    the benchmark's published protocol); the k values beyond `n_samples` are left out (pass@k needs k samples)."""
    ev = recipe.eval
    return EvalRequest(
        target=run_dir,
        benchmark=benchmark,
        n=ev.n_samples,
        temperature=ev.temperature,
        top_p=ev.top_p,
        ks=tuple(k for k in ev.k if k <= ev.n_samples) or (1,),
        max_new_tokens=ev.max_new_tokens,
        out=out,
        timeout_s=ev.timeout_s,
        memory_mb=ev.memory_mb,
    )


def _progress(benchmark: str) -> Progress:
    """Progress as log lines (train.log): when each phase starts and ends."""
    done: dict[str, int] = {}

    def report(phase: str, advance: int, total: int) -> None:
        before = done.get(phase, 0)
        done[phase] = before + advance
        if before == 0:
            log.info("%s: %s, %d samples", benchmark, phase, total)
        if before < total <= done[phase]:
            log.info("%s: %s done", benchmark, phase)

    return report


def _summary(results: EvalResults, out: Path) -> None:
    log.info(
        "%s: %d problems, isolation tier %s", results.benchmark, results.n_problems, results.isolation_tier
    )
    for p in results.pass_at_k:
        log.info("pass@%d = %.4f [%.4f, %.4f]", p.k, p.value, p.ci_low, p.ci_high)
    log.info("samples and results in %s", out)


def _selected(recipe: Recipe, run_dir: Path, benchmark: str | None, out: Path | None) -> list[EvalRequest]:
    listed = recipe.eval.benchmarks
    if benchmark is None:
        if out is not None:
            raise StudioError("--out needs --benchmark (each benchmark writes its own directory)")
        return [recipe_request(recipe, run_dir, b, eval_dir(run_dir, i, b)) for i, b in enumerate(listed)]
    if benchmark not in listed:
        raise StudioError(
            f"--benchmark {benchmark}: the recipe's eval.benchmarks are {listed or 'empty'}; "
            "`wmtp eval` evaluates a run on any other benchmark"
        )
    return [
        recipe_request(
            recipe, run_dir, benchmark, out or eval_dir(run_dir, listed.index(benchmark), benchmark)
        )
    ]


@app.command()
def main(
    run_dir: Annotated[
        Path, typer.Option("--run-dir", help="Run directory holding recipe.json and a model.")
    ],
    benchmark: Annotated[
        str | None,
        typer.Option(help="Only this one of the recipe's eval.benchmarks (default: each in turn)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory of --benchmark (default: RUN/eval/<i>-<benchmark>).")
    ] = None,
) -> None:
    """Evaluate a trained run on its recipe's benchmarks, with its recipe's settings."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        path = run_dir / RECIPE
        if not path.is_file():
            raise StudioError(f"{path} does not exist")
        recipe = recipe_from_json(path.read_text(), str(path))
        requests = _selected(recipe, run_dir, benchmark, out)
        if not requests:
            log.info("the recipe lists no eval.benchmarks: nothing to evaluate")
        for req in requests:
            results, out_dir = evaluate_model(req, _progress(req.benchmark))
            _summary(results, out_dir)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app(prog_name="python -m wmtp_studio.evaluate")
