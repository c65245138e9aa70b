"""`wmtp label` on an MBPP file: its train split judged as MBPP programs in the sandbox, written back as MBPP records
with `is_correct`, which the mbpp data source reads for critic-wmtp and the other algorithms alike."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_train_cli import wmtp
from wmtp_studio.recipe_sections import DataSection
from wmtp_studio.train.data import load_examples

MBPP = Path(__file__).resolve().parents[1] / "data" / "mbpp"


def test_label_an_mbpp_file_then_train_on_its_labels(tmp_path: Path) -> None:
    train = json.loads((MBPP / "train.json").read_text())[:3]  # tasks 601-603
    test = json.loads((MBPP / "test.json").read_text())[:2]  # tasks 11-12: never labelled, never trained on
    wrong = {**train[0], "code": train[0]["code"].replace("return", "return None #", 1)}
    (tmp_path / "prompt.json").write_text((MBPP / "prompt.json").read_text())  # the 3 shots
    data = tmp_path / "mbpp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*test, *train, wrong]))
    out = tmp_path / "mbpp-labelled.jsonl"
    res = wmtp("label", str(data), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "labelled 4 rows (3 correct)" in res.stderr
    labelled = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["task_id"], r["is_correct"]) for r in labelled] == [(601, 1), (602, 1), (603, 1), (601, 0)]
    assert labelled[3]["code"].startswith(wrong["code"].replace("\r\n", "\n").rstrip())
    assert set(labelled[0]) >= {"text", "code", "test_list", "test_setup_code", "label_status"}
    examples = load_examples(DataSection(source="mbpp", path=str(out)))
    assert [(e.id, e.is_correct) for e in examples] == [
        (f"mbpp/{r['task_id']}", r["is_correct"]) for r in labelled
    ]
