"""An evaluation's files: `results.json` (its `EvalResults`) and `samples.jsonl` (each sample's verdict), in
`eval/<i>-<benchmark>/` for the recipe's evaluations (or wherever `wmtp eval --out` puts them).

The evaluator writes them; the worker (after the recipe's evaluations), `wmtp eval` of a studio run and the
dashboard read them back with the same model, and `store.record_results` turns one into database rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from wmtp_studio.errors import StudioError

EVAL = "eval"
RESULTS = "results.json"
SAMPLES = "samples.jsonl"


class PassAtK(BaseModel):
    """Mean pass@k over problems with its 95 % bootstrap CI over problems (evaluate/passk.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int
    value: float
    ci_low: float
    ci_high: float
    n_problems: int
    n_samples: int
    """The smallest number of samples any problem had."""


class ProblemCount(BaseModel):
    """One problem's samples: `n` drawn, `c` passed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int
    c: int


class EvalResults(BaseModel):
    """results.json: what an evaluation measured and under which protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmark: str
    """The benchmark evaluated (e.g. `generated:compose:100` for a request of `generated`)."""
    protocol: dict[str, Any]
    """The benchmark's protocol (prompt format, stops, source) and the sandbox limits it was judged under."""
    sampling: dict[str, Any]
    """How the samples were drawn (n, temperature, top_p, ...), or `source` for samples judged from a file."""
    model: str
    """The model directory sampled, `external` for samples judged from a file."""
    isolation_tier: str | list[str]
    """The sandbox tier every sample ran under (a list if they differed)."""
    n_problems: int
    pass_at_k: list[PassAtK]
    per_problem: dict[str, ProblemCount]
    time: float
    """Unix time the results were written."""


class SampleVerdict(BaseModel):
    """One line of samples.jsonl: an executed sample, and why it failed. Fields added later have defaults, and
    unknown ones are ignored, so files of other versions still read."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: str
    index: int
    completion: str
    passed: bool
    status: str
    tier: str
    finish_reason: str = ""
    n_tokens: int = 0
    detail: str = ""
    """The failed assert, the limit hit, the exit status."""
    line: int | None = None
    """The failed assert's line in the program."""
    expected: str = ""
    """The failed assert's expected value, short."""
    got: str = ""
    """What the program's side of it was, short."""
    exception: str = ""
    """`Type: message` of the exception that ended the program."""
    stderr: str = ""
    """The tail of its stderr (failed samples only)."""
    output_truncated: bool = False
    """Its output went past the cap (dropped, not a failure)."""
    duration_s: float = 0.0


def write_samples(out_dir: Path, verdicts: Iterable[SampleVerdict]) -> None:
    """`out_dir/samples.jsonl`, one verdict a line (in the order given)."""
    with open(out_dir / SAMPLES, "w") as fh:
        for v in verdicts:
            fh.write(json.dumps(v.model_dump()) + "\n")


def read_samples(path: Path, limit: int | None = None) -> list[SampleVerdict]:
    """The verdicts of a samples.jsonl (its first `limit` lines at most), in file order; raises OSError, or
    ValueError (pydantic's ValidationError) for a line that is no verdict."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh):
            if limit is not None and n >= limit:
                break
            if line.strip():
                rows.append(SampleVerdict.model_validate_json(line))
    return rows


def eval_dir(run_dir: Path, index: int, benchmark: str) -> Path:
    """Where the recipe's `index`-th evaluation (`eval.benchmarks[index]`) writes its files."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in benchmark)[:60]
    return run_dir / EVAL / f"{index}-{slug}"


def write_results(out_dir: Path, results: EvalResults) -> None:
    """`out_dir/results.json`, replaced atomically (indented JSON, as every version has written it)."""
    tmp = out_dir / f"{RESULTS}.tmp"
    tmp.write_text(json.dumps(results.model_dump(mode="json"), indent=2))
    tmp.replace(out_dir / RESULTS)


def read_results(out_dir: Path) -> EvalResults:
    """The results in `out_dir/results.json`; a StudioError naming the file if it holds none."""
    path = out_dir / RESULTS
    try:
        return EvalResults.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise StudioError(f"{path} is not an evaluation's results: {where}: {err['msg']}") from None
