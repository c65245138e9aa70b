"""`wmtp label`: `is_correct` for every (prompt, completion) of a file, from running its tests in the sandbox;
candidates sampled from a model when asked (critic-wmtp's verifiable rewards need incorrect ones too)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.judging import make_sandbox
from wmtp_studio.evaluate.model_files import resolve_model_dir
from wmtp_studio.evaluate.run import Progress
from wmtp_studio.evaluate.tasks import MBPP_ROW, is_mbpp_record, mbpp_label_record, mbpp_label_rows
from wmtp_studio.prompts import MBPP_STOP, mbpp_program
from wmtp_studio.records import read_records


def label_file(
    path: Path,
    out: Path,
    *,
    model: Path | None = None,
    n: int = 4,
    temperature: float = 0.8,
    max_new_tokens: int = 256,
    require_tier: str | None = None,
    slots: int | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    """`wmtp label`: write `is_correct` for every (prompt, completion) by running its tests in the sandbox.

    Input JSONL lines need `prompt` and `tests` (assert strings); `completion` is optional when `model` is given,
    which samples `n` candidates per distinct prompt at `temperature` and adds them as rows (the verifiable
    rewards of critic-wmtp need incorrect candidates too). Program = prompt + completion + tests.
    An MBPP file (task_id, text, code, test_list) is labelled on its train split instead: candidates are sampled
    after the evaluation's 3-shot prompt, judged as MBPP programs, and written back as MBPP records (`code` =
    the candidate) with `is_correct`, the one data file of the mbpp-1b recipes.
    """
    rows: list[dict[str, Any]] = []
    records = read_records(path)
    if records and is_mbpp_record(records[0][1]):
        rows, records = mbpp_label_rows(path), []
    for where, rec in records:
        if (
            not isinstance(rec.get("prompt"), str)
            or not isinstance(rec.get("tests"), list)
            or not rec["tests"]
        ):
            raise StudioError(f"{path} {where}: needs a string `prompt` and a non-empty list `tests`")
        if "completion" in rec and not isinstance(rec["completion"], str):
            raise StudioError(f"{path} {where}: `completion` must be a string")
        rows.append(rec)
    if model is not None:
        stop = MBPP_STOP if rows and MBPP_ROW in rows[0] else None
        rows += _sample_candidates(rows, model, n, temperature, max_new_tokens, progress, stop)
    rows = [r for r in rows if "completion" in r]
    if not rows:
        raise StudioError(f"{path}: no completions to label (give completions or --model to sample them)")
    programs = [
        mbpp_program(r[MBPP_ROW], r["completion"])
        if MBPP_ROW in r
        else r["prompt"] + r["completion"] + "\n" + "\n".join(r["tests"]) + "\n"
        for r in rows
    ]
    # where the benchmark's own asserts start: only they are instrumented
    starts = [
        len(prog) - len("\n".join(r[MBPP_ROW]["test_list"] if MBPP_ROW in r else r["tests"]) + "\n")
        for prog, r in zip(programs, rows, strict=True)
    ]
    with make_sandbox(require_tier, slots) as sandbox:
        results = sandbox.run_many(programs, tests_from=starts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w") as fh:
        for r, res in zip(rows, results, strict=True):
            fh.write(
                json.dumps(
                    {
                        **mbpp_label_record(r),
                        "is_correct": int(res.passed),
                        "label_status": res.status,
                        "label_tier": res.tier.name.lower(),
                    }
                )
                + "\n"
            )
    tmp.replace(out)
    return {"rows": len(rows), "correct": sum(r.passed for r in results)}


def _sample_candidates(
    rows: list[dict[str, Any]],
    model_path: Path,
    n: int,
    temperature: float,
    max_new_tokens: int,
    progress: Progress | None,
    stop: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    from wmtp_studio.evaluate.generate import SamplingConfig, generate
    from wmtp_studio.train.model import load_for_generation

    model_dir, _ = resolve_model_dir(model_path)
    model, tokenizer, max_new_tokens = load_for_generation(model_dir, max_new_tokens)
    prompts = {r["prompt"]: r for r in rows}
    ids = {f"p{i}": p for i, p in enumerate(prompts)}
    cfg = SamplingConfig(
        n=n,
        temperature=temperature,
        top_p=0.95,
        max_new_tokens=max_new_tokens,
        stop=tuple(stop) if stop else ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"),
    )
    samples = generate(
        model,
        tokenizer,
        list(ids.items()),
        cfg,
        progress=(lambda k: progress("generate", k, len(ids) * n)) if progress else None,
    )
    extra = []
    for s in samples:
        base = prompts[ids[s.prompt_id]]
        extra.append(
            {k: v for k, v in base.items() if k not in ("completion", "is_correct")}
            | {"completion": s.text, "source": f"sampled:{model_dir}"}
        )
    return extra
