"""Prompt formats shared by training and evaluation, so that a model is evaluated on the format it was trained on.

Torch-free: imported by the trainer, the evaluator and the front ends alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MBPP_FEWSHOT_IDS = (2, 3, 4)  # Austin et al. 2021: the standard 3-shot prompt uses tasks 2, 3 and 4
MBPP_STOP = ("[DONE]",)
# Austin et al. 2021: MBPP's splits are ranges of task ids, whatever file holds the tasks.
MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}


def mbpp_code(record: Mapping[str, Any]) -> str:
    """MBPP's reference solution with `\\r\\n` line endings normalised."""
    return str(record["code"]).replace("\r\n", "\n").rstrip() + "\n"


def mbpp_task_block(record: Mapping[str, Any]) -> str:
    """One MBPP task in the Austin et al. format, up to and including `[BEGIN]\\n`."""
    tests = "\n".join(record["test_list"])
    return (
        f"You are an expert Python programmer, and here is your task: {record['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )


def mbpp_prompt(record: Mapping[str, Any], shots: Sequence[Mapping[str, Any]] = ()) -> str:
    """Few-shot MBPP prompt: each shot is task block + code + `[DONE]`, then the task block of `record`."""
    parts = [mbpp_task_block(s) + mbpp_code(s) + "[DONE]\n" for s in shots]
    return "".join(parts) + mbpp_task_block(record)


def mbpp_completion(record: Mapping[str, Any]) -> str:
    """Training target after an MBPP prompt: the code, then `[DONE]` (the stop sequence at evaluation)."""
    return mbpp_code(record) + "[DONE]"


def mbpp_program(record: Mapping[str, Any], completion: str) -> str:
    """The program that decides an MBPP sample: completion, then test_setup_code, then the asserts."""
    setup = str(record.get("test_setup_code") or "").replace("\r\n", "\n")
    return completion.rstrip() + "\n" + setup + "\n" + "\n".join(record["test_list"]) + "\n"


def mbpp_entry_point(record: Mapping[str, Any]) -> str | None:
    """The function MBPP's asserts exercise: the first name they call that the reference solution defines."""
    import ast
    import warnings

    try:
        with warnings.catch_warnings():  # MBPP has regexes such as "\d" in plain strings
            warnings.simplefilter("ignore")
            tree = ast.parse(mbpp_code(record))
            tests = [ast.parse(t) for t in record["test_list"]]
    except SyntaxError:
        return None
    defined = {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    for test in tests:
        for node in ast.walk(test):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined:
                return node.func.id
    return None
