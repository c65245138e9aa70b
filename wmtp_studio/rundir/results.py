"""An evaluation's files: `results.json` (its `EvalResults`) and `samples.jsonl` (each sample's verdict), in
`eval/<i>-<benchmark>/` for the recipe's evaluations (or wherever `wmtp eval --out` puts them).

The evaluator writes them; the worker (after the recipe's evaluations), `wmtp eval` of a studio run and the
dashboard read them back with the same model, and `store.record_results` turns one into database rows.
"""

from __future__ import annotations

import json
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
