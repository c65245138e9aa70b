"""The trainer writes the numbers it wrote before its set-up and loop were restructured.

tests/data/train_fingerprint.json was recorded by benchmarks/train_fingerprint.py on the trainer as it was before
(one `setup()` of positional arguments patched by the loop, the schedule checks inline in the loop, rho1's select
rescale in algorithms.py). Every algorithm, packing off and on, critic Stage 1, rho1 cached and live, 1 and 2
micro-batches per step, and an interrupted then resumed run must write the same metrics.jsonl lines (kinds,
steps, events, every value) and leave the same tensors: bit for bit (the tensors' sha256 included) with the torch
and CPU of the record; elsewhere, where the last bits of float sums may differ, the values agree to 1e-4 (a value
rounded to 4 decimals for the metrics may round the other way: 1e-4 apart).
One entry was re-recorded on purpose since: `critic-all-accum2`, when critic's weight statistics and value-loss
mean became the whole optimiser step's rather than each micro-batch's (the other 13 runs stayed bit-identical).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "train_fingerprint.json"


def _fingerprint_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "train_fingerprint", ROOT / "benchmarks" / "train_fingerprint.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rounded(x: float) -> bool:
    """Whether x has at most 4 decimals, as the token weights the trainer rounds for its lines (`_top_tokens`)."""
    return "e" not in repr(x) and len(repr(x).partition(".")[2]) <= 4


def _close(want: Any, got: Any, where: str = "") -> None:
    """Same structure; numbers equal to 1e-4 (relative) or 1e-6 (absolute), or, rounded to 4 decimals, 1e-4 apart
    (another CPU's last float bits can round a token weight of 0.97145 the other way); strings and ints exactly."""
    if isinstance(want, float) or isinstance(got, float):
        assert isinstance(got, int | float), where
        assert (
            math.isclose(want, got, rel_tol=1e-4, abs_tol=1e-6)
            or (_rounded(float(want)) and _rounded(float(got)) and abs(want - got) <= 1.000001e-4)
            or (math.isnan(want) and math.isnan(got))
        ), f"{where}: {want!r} != {got!r}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(want) == sorted(got), where
        for k in want:
            _close(want[k], got[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(want) == len(got), where
        for i, (a, b) in enumerate(zip(want, got, strict=True)):
            _close(a, b, f"{where}[{i}]")
    else:
        assert want == got, f"{where}: {want!r} != {got!r}"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the recorded numbers are the CPU's fp32 numbers")
def test_every_algorithm_writes_the_recorded_numbers(tmp_path: Path, wmtp_home: Path) -> None:
    fp = _fingerprint_module()
    golden = json.loads(GOLDEN.read_text())
    exact = golden.pop("_environment") == fp.environment()  # the same torch on the same CPU: the same bits
    got = json.loads(json.dumps(fp.run_all(tmp_path)))  # as the record holds it: JSON floats
    assert sorted(got) == sorted(golden) == sorted(fp.RUNS)
    for name, want in golden.items():
        if exact:  # every line and every tensor's sha256, bit for bit
            assert fp.first_difference(want, got[name]) is None, (name, fp.first_difference(want, got[name]))
        else:
            _close(want["lines"], got[name]["lines"], f"{name}.lines")
            _close(want["trainer_state"], got[name]["trainer_state"], f"{name}.trainer_state")
