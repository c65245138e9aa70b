"""`wmtp-studio quickstart --report`'s Markdown, from real store rows of a quickstart (SQLite in a temp dir)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.evaluations import first_solved, greedy_pass1
from wmtp_studio import report, store
from wmtp_studio.models import Evaluation
from wmtp_studio.settings import Settings
from wmtp_studio.submit import submit_quickstart


def _evaluation(run_id: int, benchmark: str, solved: int, n: int = 10) -> Evaluation:
    ci = (max(0.0, solved / n - 0.1), min(1.0, solved / n + 0.1))
    return greedy_pass1(run_id, first_solved(solved, n), benchmark=benchmark, ci=ci)


def test_report_of_a_finished_quickstart(tmp_path: Path) -> None:
    settings = Settings.from_env({"WMTP_HOME": str(tmp_path / "home")})
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine=engine)
    cset, runs = submit_quickstart(engine=engine, settings=settings)
    assert cset.id is not None and report.latest_quickstart(engine) == cset.id
    solved = {"ntp": 6, "baseline-mtp": 4, "critic-wmtp": 7, "rho1-wmtp": 6}
    for _ in runs:
        run = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30)
        assert run is not None and run.id is not None
        if run.comparison_set_id is None:  # the base
            store.record_evaluation(engine=engine, evaluation=_evaluation(run.id, "generated:basic:100", 7))
            Path(run.run_dir, "train.log").write_text(
                "12:00:00 INFO train.num_threads auto: 2 (1.9 of 2 free)\n"
            )
        else:
            store.record_evaluation(
                engine=engine, evaluation=_evaluation(run.id, "generated:compose:100", solved[run.algorithm])
            )
            store.record_evaluation(engine=engine, evaluation=_evaluation(run.id, "humaneval", 0, n=164))
        store.finish_run(
            engine=engine, run_id=run.id, owner="w", token=run.fencing_token, status="succeeded", exit_code=0
        )
    qs = report.load_quickstart(engine, cset.id)
    assert [r.id for r in qs.runs] == [r.id for r in runs]
    text = report.render(engine, qs, ["train.steps=3"])
    assert re.search(r"Quickstart at commit \S+, .* \d+ usable core", text)
    assert "torch threads per run: base 2, ntp ?, baseline-mtp ?" in text  # from each run's train.log
    assert "Overrides (not the shipped quickstart): train.steps=3." in text
    assert "generated:basic:100 pass@1 0.700 [0.600, 0.800]" in text  # the base's own line
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| #")}
    assert len(rows) == 4
    header = next(line for line in text.splitlines() if line.startswith("| run"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = {name: [c.strip() for c in row.strip("|").split("|")] for name, row in rows.items()}
    baseline_mtp = dict(zip(columns, next(v for k, v in cells.items() if "baseline-mtp" in k), strict=True))
    assert baseline_mtp["generated:compose:100 pass@1"] == "0.400 [0.300, 0.500]"
    # paired with ntp on the same 10 problems: (4 - 6) / 10 = -0.2
    assert baseline_mtp["Δ generated:compose:100 pass@1"].startswith("-0.200 [")
    # discordant problems t4, t5, both solved by ntp only: exact two-sided sign test 2 * (1/2)^2 = 0.5
    assert baseline_mtp["p generated:compose:100 pass@1"] == "0.5 (exact sign test)"
    ntp = dict(zip(columns, next(v for k, v in cells.items() if "-ntp-" in k), strict=True))
    assert ntp["Δ generated:compose:100 pass@1"] == "baseline"
    note = text.rstrip().splitlines()[-1]  # the compare screen's note under the table names the test used
    assert not note.startswith("|") and "p:" in note
