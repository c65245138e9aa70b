"""The run screen under Pilot on a real studio database fed with real metric streams of 60-step runs.

The `ctx` fixture (a temp studio home and database, polled every 50 ms) comes from conftest.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text
from textual.app import App
from textual.widgets import DataTable, Log, Static, TabbedContent

from tests.tui.conftest import ScreenApp, until
from wmtp_studio import store
from wmtp_studio.compare import FACTOR, expand
from wmtp_studio.models import Evaluation, Run
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.metrics import MetricLine, read_metrics
from wmtp_studio.rundir.results import EvalResults, write_results
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.modals import ErrorModal
from wmtp_studio.tui.screens.run import RunScreen
from wmtp_studio.tui.widgets.charts import LineChart
from wmtp_studio.tui.widgets.evaluations import EvaluationTable
from wmtp_studio.tui.widgets.heatmap import Heatmap
from wmtp_studio.tui.widgets.tokens import TokenView

pytestmark = pytest.mark.anyio  # at import, so that it combines with the size parametrisation below
ROOT = Path(__file__).resolve().parents[2]
STREAMS = ROOT / "tests" / "data" / "metrics"


def run_app(ctx: StudioContext, run_id: int) -> ScreenApp:
    """The run screen of `run_id`, alone in conftest's bare app."""
    return ScreenApp(lambda: RunScreen(ctx, run_id))


def stream(algorithm: str) -> list[MetricLine]:
    return read_metrics(STREAMS / f"{algorithm}.jsonl")


def new_run(ctx: StudioContext, algorithm: str, lines: list[MetricLine] | None = None) -> Run:
    recipe = load_recipe(ROOT / "recipes" / f"tiny-{algorithm}.yaml", ["train.steps=60"])
    with store.submission(engine=ctx.engine, runs_dir=ctx.settings.runs_dir) as sub:
        run = sub.add_run(recipe=recipe)
    assert run.id is not None
    if lines:
        store.ingest_metric_lines(engine=ctx.engine, run_id=run.id, lines=lines)
    return run


def chart(app: App[None], chart_id: str) -> LineChart:
    return app.screen.query_one(f"#{chart_id}", LineChart)


def points(app: App[None], chart_id: str, label: str) -> list[float]:
    return chart(app, chart_id).drawn.get(label, ([], []))[0]


def plain(widget: Static) -> str:
    content = widget.content
    return content.plain if isinstance(content, Text) else str(content)


async def test_curves_and_header_show_the_stored_stream(ctx: StudioContext) -> None:
    run = new_run(ctx, "critic-wmtp", stream("critic-wmtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(points(app, "chart-loss", "loss")) == 12, "the loss curve")
        assert points(app, "chart-loss", "loss") == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60]
        assert set(chart(app, "chart-loss").drawn) == {"loss", "head0", "head1", "head2", "head3"}
        assert points(app, "chart-val", "val loss") == [20, 40, 60]
        assert chart(app, "chart-lr").drawn["lr"][1][-1] == pytest.approx(0.0003)
        header = plain(app.screen.query_one("#run-header", Static))
        assert "tiny-critic-wmtp" in header and "critic-wmtp" in header and "step 60/60" in header


async def test_weights_tab_heatmap_histogram_and_critic_signals(ctx: StudioContext) -> None:
    run = new_run(ctx, "critic-wmtp", stream("critic-wmtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        heatmap = app.screen.query_one(Heatmap)
        await until(pilot, lambda: len(heatmap.steps) == 6, "the heatmap")
        assert heatmap.head == 0  # a critic run opens on head 0, whose weights vary
        assert heatmap.steps == [10, 20, 30, 40, 50, 60]  # one column per hist line
        assert "head 0" in heatmap.render().plain  # type: ignore[union-attr]
        bars = app.screen.query_one("#bars")
        # the step-60 histogram of head 0, as written by the trainer
        want = [61.0, 80.0, 52.0, 20.0]
        await until(pilot, lambda: bars.counts[:4] == want, "the latest histogram")  # type: ignore[attr-defined]
        assert points(app, "chart-ev", "held-out") == [20, 40, 60]  # stage-1 steps
        assert len(points(app, "chart-critic2", "value loss")) == 12
        assert chart(app, "chart-entropy").drawn.keys() == {"head0", "head1", "head2", "head3"}
        assert chart(app, "chart-critic1").display and not chart(app, "chart-selected").display
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: heatmap.head == 1, "head 1")


async def test_rho1_selected_fraction_is_charted_per_head(ctx: StudioContext) -> None:
    run = new_run(ctx, "rho1-wmtp", stream("rho1-wmtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: bool(chart(app, "chart-selected").drawn), "the rho-1 chart")
        assert set(chart(app, "chart-selected").drawn) == {"head0", "head1", "head2", "head3"}
        assert chart(app, "chart-selected").display and not chart(app, "chart-critic1").display


async def test_evaluations_table_shows_pass_at_k_with_ci_and_tier(ctx: StudioContext) -> None:
    run = new_run(ctx, "ntp", stream("ntp"))
    for k, value, tier in ((1, 0.42, "namespace"), (10, 0.8, ["namespace", "process"])):
        evaluation = Evaluation(
            run_id=run.id or 0,
            benchmark="generated",
            k=k,
            pass_at_k=value,
            ci_low=value - 0.05,
            ci_high=value + 0.05,
            n_problems=200,
            protocol={"protocol": "greedy", "isolation_tier": tier},
        )
        store.record_evaluation(engine=ctx.engine, evaluation=evaluation)
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        table = app.screen.query_one(EvaluationTable)
        await until(pilot, lambda: table.row_count == 2, "two evaluations")
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(2)]
        assert rows[0] == ["generated", "1", "0.420", "[0.370, 0.470]", "200", "namespace"]
        assert rows[1] == ["generated", "10", "0.800", "[0.750, 0.850]", "200", "namespace, process"]
        assert not app.screen.query_one("#no-evaluations").display


async def test_tokens_tab_renders_the_latest_sequence_per_head(ctx: StudioContext) -> None:
    lines = stream("critic-wmtp")
    run = new_run(ctx, "critic-wmtp", lines)
    latest = [ln for ln in lines if ln.kind == "top_tokens"][-1].data
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        view = app.screen.query_one(TokenView)
        await until(pilot, lambda: bool(view.tokens), "the token view")
        assert view.tokens == latest["tokens"]
        assert "return len(text) + 6" in plain(view)
        table = app.screen.query_one("#top-tokens", DataTable)
        assert table.row_count == 5  # the trainer's top 20 spans 4 heads
        # head 0's largest weight at step 60 (3.326) is on "text" at position 23
        assert [str(c) for c in table.get_row_at(0)] == ["0", "23", repr("text"), "3.3260"]
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: str(table.get_row_at(0)[0]) == "1", "head 1's tokens")


async def test_log_tab_tails_the_run_log(ctx: StudioContext) -> None:
    run = new_run(ctx, "ntp")
    log_path = Path(run.run_dir) / "train.log"
    log_path.write_text("loading model\ntrain 1/60\n")
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("5")
        log = app.screen.query_one(Log)
        await until(pilot, lambda: log.line_count >= 2, "the log")
        with open(log_path, "a") as fh:
            fh.write("train 2/60\ndone\n")
        await until(pilot, lambda: log.lines[-1] == "done", "the new log lines")
        assert list(log.lines)[:4] == ["loading model", "train 1/60", "train 2/60", "done"]


async def test_recipe_tab_shows_the_frozen_recipe_and_its_diff(ctx: StudioContext) -> None:
    base = load_recipe(ROOT / "recipes" / "tiny-ntp.yaml", ["train.steps=60"])
    (recipe, diff), *_ = expand(base, ["baseline-mtp"], [3])
    with store.submission(engine=ctx.engine, runs_dir=ctx.settings.runs_dir) as sub:
        cset = sub.add_comparison_set(
            name="cmp", base=base, factor=FACTOR, diff={"algorithm": ["baseline-mtp"], "seed": [3]}
        )
        run = sub.add_run(recipe=recipe, comparison_set_id=cset.id, diff=diff)
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        view = app.screen.query_one("#recipe-view", Static)
        await until(pilot, lambda: "frozen recipe" in plain(view), "the recipe")
        text = plain(view)
        assert f"name: {recipe.name}" in text and "comparison set #" in text
        assert "train.seed: 0 -> 3" in text


async def test_live_run_grows_and_a_resume_cuts_back(ctx: StudioContext) -> None:
    lines = stream("baseline-mtp")
    run = new_run(ctx, "baseline-mtp", lines[:9])  # train lines at steps 5, 10, 15, 20
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunScreen)
        screen.min_redraw_s = 0.0
        await until(pilot, lambda: len(points(app, "chart-loss", "loss")) == 4, "the first lines")
        store.ingest_metric_lines(engine=ctx.engine, run_id=run.id or 0, lines=lines[9:])
        await until(pilot, lambda: len(points(app, "chart-loss", "loss")) == 12, "the new lines")
        # a resume from the step-25 checkpoint: the stored stream is cut back, then rewritten
        store.truncate_metrics(engine=ctx.engine, run_id=run.id or 0, from_seq=10)
        await until(pilot, lambda: len(points(app, "chart-loss", "loss")) == 5, "the cut-back stream")
        assert points(app, "chart-loss", "loss") == [5, 10, 15, 20, 25]
        store.ingest_metric_lines(engine=ctx.engine, run_id=run.id or 0, lines=lines[10:])
        await until(pilot, lambda: len(points(app, "chart-loss", "loss")) == 12, "the rewritten stream")


async def test_unknown_run_shows_a_modal(ctx: StudioContext) -> None:
    app = run_app(ctx, 999)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorModal), "the error modal")
        assert "no run with id 999" in plain(app.screen.query_one("#error-message", Static))
        await pilot.press("escape")
        await until(pilot, lambda: not any(isinstance(s, RunScreen) for s in app.screen_stack), "going back")


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_every_tab_renders_small_and_large(ctx: StudioContext, size: tuple[int, int]) -> None:
    run = new_run(ctx, "critic-wmtp", stream("critic-wmtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: len(points(app, "chart-loss", "loss")) == 12, "the loss curve")
        tabs = app.screen.query_one(TabbedContent)
        for key, tab in zip(
            "123456", ("curves", "weights", "evaluations", "tokens", "log", "recipe"), strict=True
        ):
            await pilot.press(key)
            await pilot.pause()
            assert tabs.active == tab
        await pilot.press("2")
        await until(pilot, lambda: len(app.screen.query_one(Heatmap).steps) == 6, "the heatmap")
        app.save_screenshot(str(Path(run.run_dir) / "weights.svg"))


async def test_log_tab_falls_back_to_the_stored_error_tail(ctx: StudioContext) -> None:
    run = new_run(ctx, "ntp")
    owner = "other-host:1"
    claimed = store.claim_next_run(engine=ctx.engine, owner=owner, gpus_free=0, lease_s=60)
    assert claimed is not None and claimed.id == run.id
    store.finish_run(
        engine=ctx.engine,
        run_id=run.id or 0,
        owner=owner,
        token=claimed.fencing_token,
        status="failed",
        exit_code=1,
        error_tail="Traceback (most recent call last):\nRuntimeError: out of memory",
    )
    app = run_app(ctx, run.id or 0)  # the run's train.log is not on this host
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("5")
        log = app.screen.query_one(Log)
        await until(pilot, lambda: log.line_count == 2, "the stored error tail")
        assert log.lines[-1] == "RuntimeError: out of memory"
        assert "is not on this host" in plain(app.screen.query_one("#log-caption", Static))


async def test_evaluations_tab_shows_each_sample_and_why_it_failed(
    ctx: StudioContext, tmp_path: Path
) -> None:
    from wmtp_studio.tui.widgets.samples import SamplesView

    def shown(widget: Static) -> str:
        console = Console(width=200, file=io.StringIO(), record=True)
        console.print(widget.content)
        return console.export_text()

    samples = tmp_path / "samples.jsonl"
    records = [
        {"task_id": "HumanEval/53", "index": 0, "completion": "    return x + y\n", "passed": True,
         "status": "passed"},
        {"task_id": "HumanEval/54", "index": 0, "completion": "    return x - y  # wrong\n", "passed": False,
         "status": "failed", "detail": "assert at line 21 failed", "line": 21, "expected": "1", "got": "-1",
         "exception": "", "stderr": ""},
        {"task_id": "HumanEval/55", "index": 0, "completion": "    raise ValueError('boom')\n", "passed": False,
         "status": "failed", "detail": "exit status 1", "exception": "ValueError: boom",
         "stderr": "Traceback (most recent call last):\nValueError: boom\n"},
    ]  # fmt: skip
    records = [r | {"tier": "namespace"} for r in records]
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = new_run(ctx, "ntp", stream("ntp"))
    evaluation = Evaluation(
        run_id=run.id or 0, benchmark="humaneval", k=1, pass_at_k=1 / 3, ci_low=0.0, ci_high=1.0, n_problems=3,
        protocol={"isolation_tier": "namespace", "samples": str(samples)},
    )  # fmt: skip
    store.record_evaluation(engine=ctx.engine, evaluation=evaluation)
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("3")
        view = app.screen.query_one(SamplesView)
        table = view.query_one("#samples-table", DataTable)
        await until(pilot, lambda: table.row_count == 3, "the evaluation's three samples")
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(3)]
        assert [r[0] for r in rows] == ["HumanEval/54", "HumanEval/55", "HumanEval/53"]  # failures first
        assert rows[0][3] == "assert at line 21 failed; expected 1, got -1"
        assert rows[1][3] == "exit status 1; ValueError: boom" and rows[2][2:] == ["passed", ""]
        detail = view.query_one("#sample-detail", Static)
        await until(pilot, lambda: "return x - y  # wrong" in shown(detail), "the first sample's code")
        table.focus()
        await pilot.press("down")
        await until(pilot, lambda: "raise ValueError('boom')" in shown(detail), "the second sample's code")
        assert "Traceback" in shown(detail) and "exit status 1; ValueError: boom" in shown(detail)
        # An evaluation stored without the path: its samples are found beside the run's results.json.
        found = Path(run.run_dir) / "eval" / "0-mbpp"
        found.mkdir(parents=True)
        write_results(
            found,
            EvalResults(
                benchmark="mbpp", protocol={}, sampling={}, model="m", isolation_tier="namespace",
                n_problems=1, pass_at_k=[], per_problem={}, time=0.0,
            ),
        )  # fmt: skip
        (found / "samples.jsonl").write_text(json.dumps(records[0] | {"task_id": "mbpp/11"}) + "\n")
        store.record_evaluation(
            engine=ctx.engine,
            evaluation=Evaluation(
                run_id=run.id or 0,
                benchmark="mbpp",
                k=1,
                pass_at_k=1.0,
                ci_low=1.0,
                ci_high=1.0,
                n_problems=1,
            ),
        )
        evaluations = app.screen.query_one(EvaluationTable)
        await until(pilot, lambda: evaluations.row_count == 2, "the second evaluation")
        evaluations.focus()
        await pilot.press("down")
        await until(pilot, lambda: table.row_count == 1, "the mbpp evaluation's sample")
        assert str(table.get_row_at(0)[0]) == "mbpp/11"
