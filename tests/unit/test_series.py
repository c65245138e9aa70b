"""The run screen's data, without Textual: downsampling, histogram columns, the store cursor and the log tail."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from wmtp_studio import store
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.metrics import MetricLine, read_metrics
from wmtp_studio.series import (
    FeedBatch,
    HistHistory,
    MetricFeed,
    MetricSeries,
    RunData,
    SeriesStore,
    TextTail,
    downsample,
    pick_columns,
)

ROOT = Path(__file__).resolve().parents[2]
STREAM = ROOT / "tests" / "data" / "metrics" / "critic-wmtp.jsonl"


def test_downsample_keeps_each_buckets_extremes_and_the_last_point() -> None:
    xs = list(range(10))
    ys = [5.0, 1.0, 7.0, 3.0, 9.0, 2.0, 8.0, 4.0, 6.0, 0.0]
    # width 2: the first (index 0) and last (index 9) points, and two buckets over indices 1..8: 1 + b * 8 // 2
    # gives [1, 5) and [5, 9).  [1, 7, 3, 9]: min 1 at index 1, max 9 at index 4.
    # [2, 8, 4, 6]: min 2 at index 5, max 8 at index 6.
    assert downsample(xs, ys, 2) == ([0, 1, 4, 5, 6, 9], [5.0, 1.0, 9.0, 2.0, 8.0, 0.0])


def test_downsample_leaves_short_series_alone_and_bounds_long_ones() -> None:
    assert downsample([1, 2, 3], [3.0, 2.0, 1.0], 2) == ([1, 2, 3], [3.0, 2.0, 1.0])
    xs = list(range(10_000))
    ys = [math.sin(x / 50) for x in xs]
    dx, dy = downsample(xs, ys, 80)
    assert len(dx) <= 2 * 80 + 2
    assert dx[0] == 0 and dx[-1] == 9_999 and dy[-1] == ys[-1]
    assert max(dy) == max(ys) and min(dy) == min(ys)
    assert dx == sorted(dx)


def test_series_skips_non_finite_values() -> None:
    s = MetricSeries()
    for step, v in [(1, 2.0), (2, math.nan), (3, math.inf), (4, None), (5, 1.5)]:
        s.append(step, v)
    assert (s.steps, s.values, s.nonfinite) == ([1, 5], [2.0, 1.5], 3)
    assert s.last() == (5, 1.5)


def test_series_store_finds_the_heads() -> None:
    store_ = SeriesStore()
    for name in ("train/loss", "train/head0/ce", "train/head3/w_std", "val/head1/val_ce", "stage1/x"):
        store_.add(name, 1, 1.0)
    assert store_.heads() == [0, 1, 3]
    assert "train/loss" in store_ and store_.names()[0] == "stage1/x"


def test_pick_columns_spreads_evenly_and_keeps_the_ends() -> None:
    # n=10, width=4: round(i * 9 / 3) for i in 0..3 = 0, 3, 6, 9
    assert pick_columns(10, 4) == [0, 3, 6, 9]
    assert pick_columns(3, 4) == [0, 1, 2]
    assert pick_columns(5, 1) == [4]


def test_hist_history_columns_of_one_head() -> None:
    h = HistHistory()
    for step in range(0, 50, 10):  # 5 frames, head 1 counts = [step, 1]
        h.append(step, [0.0, 1.0, 2.0], [[0.0, 0.0], [float(step), 1.0]])
    steps, cols = h.columns(1, 3)
    # pick_columns(5, 3) = round(i * 4 / 2) = 0, 2, 4 -> steps 0, 20, 40
    assert steps == [0, 20, 40]
    assert cols == [[0.0, 1.0], [20.0, 1.0], [40.0, 1.0]]
    assert h.latest(1) == [40.0, 1.0] and h.n_heads == 2


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    store.upgrade(engine=engine)
    return engine


def _run_with(engine: Engine, tmp_path: Path, lines: list[MetricLine]) -> int:
    recipe = load_recipe(ROOT / "recipes" / "tiny-critic-wmtp.yaml", [])
    with store.submission(engine=engine, runs_dir=tmp_path / "runs") as sub:
        run = sub.add_run(recipe=recipe)
    assert run.id is not None
    store.ingest_metric_lines(engine=engine, run_id=run.id, lines=lines)
    return run.id


def _drain(feed: MetricFeed, data: RunData) -> None:
    while (batch := feed.fetch()).points or batch.blobs:
        data.apply(batch)


def test_feed_reads_incrementally_and_pages_without_cutting_a_line(engine: Engine, tmp_path: Path) -> None:
    lines = read_metrics(STREAM)
    run_id = _run_with(engine, tmp_path, lines[:12])
    feed, data = MetricFeed(engine=engine, run_id=run_id, page=40), RunData()
    first = feed.fetch()
    # seqs 1-3 (stage 1) hold 3 scalars each, seq 5 (the first train line) 32: a page of 40 rows ends inside
    # seq 5, which is left for the next fetch.
    assert first.more and {p[0] for p in first.points} == {1, 2, 3}
    assert data.apply(first) >= {"points"}
    _drain(feed, data)
    loss = data.series.get("train/loss")
    assert loss is not None and loss.steps == [5, 10, 15, 20]
    assert data.hists.steps == [10, 20] and data.tokens is not None and data.tokens.step == 20
    store.ingest_metric_lines(engine=engine, run_id=run_id, lines=lines[12:])
    _drain(feed, data)
    assert loss.steps == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60]
    assert [e.payload["event"] for e in data.events] == ["start", "stage1_done", "checkpoint", "done"]
    stage1 = data.series.get("stage1/heldout_explained_variance")
    assert stage1 is not None and len(stage1) == 3


def test_feed_starts_over_when_the_stream_is_cut_back(engine: Engine, tmp_path: Path) -> None:
    lines = read_metrics(STREAM)
    run_id = _run_with(engine, tmp_path, lines)
    feed, data = MetricFeed(engine=engine, run_id=run_id), RunData()
    data.apply(feed.fetch())
    store.truncate_metrics(engine=engine, run_id=run_id, from_seq=14)  # a resume from the step-25 checkpoint
    batch = feed.fetch()
    assert batch.reset
    data.apply(batch)
    loss = data.series.get("train/loss")
    assert loss is not None and loss.steps == [5, 10, 15, 20, 25]
    assert data.hists.steps == [10, 20]


def test_feed_starts_over_when_the_stream_was_cut_back_and_rewritten_past_its_cursor(
    engine: Engine, tmp_path: Path
) -> None:
    lines = read_metrics(STREAM)
    run_id = _run_with(engine, tmp_path, lines[:20])
    feed, data = MetricFeed(engine=engine, run_id=run_id), RunData()
    _drain(feed, data)
    # between two polls: cut back to seq 14 (a resume) and rewritten beyond the old cursor with other values
    store.truncate_metrics(engine=engine, run_id=run_id, from_seq=14)
    rewritten = [
        ln.model_copy(update={"metrics": {"loss": 9.0}}) if ln.kind == "train" else ln for ln in lines[14:]
    ]
    store.ingest_metric_lines(engine=engine, run_id=run_id, lines=rewritten)
    batch = feed.fetch()
    assert batch.reset  # the stream is longer than the cursor now: only the epoch tells
    data.apply(batch)
    _drain(feed, data)
    loss = data.series.get("train/loss")
    assert loss is not None and loss.steps == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60]
    assert loss.values[5:] == [9.0] * 7  # steps 30.. come from the rewritten stream only


def test_feed_keeps_only_the_names_asked_for(engine: Engine, tmp_path: Path) -> None:
    run_id = _run_with(engine, tmp_path, read_metrics(STREAM))
    batch = MetricFeed(engine=engine, run_id=run_id, keep=lambda n: n.endswith("/loss")).fetch()
    assert {p[1] for p in batch.points} == {"train/loss"}


def test_run_data_reset_clears_everything() -> None:
    data = RunData()
    data.series.add("train/loss", 1, 2.0)
    data.hists.append(1, [0.0, 1.0], [[1.0]])
    assert data.apply(FeedBatch(reset=True, points=[], blobs=[])) == {"points", "hist", "tokens", "events"}
    assert data.series.names() == [] and data.hists.steps == []


def test_text_tail_reads_complete_lines_and_restarts_when_cut(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    tail = TextTail(log, first_bytes=10)
    assert tail.read() == (False, []) and not tail.found  # no file yet
    log.write_bytes(b"first line\nsecond\nthi")
    # 21 bytes: the first read starts 10 before the end ("second\nthi") and skips to the next line boundary.
    assert tail.read() == (False, [])
    with open(log, "ab") as fh:
        fh.write(b"rd\nbar 1/2\rbar 2/2\n")
    assert tail.read() == (False, ["third", "bar 2/2"]) and tail.found
    log.write_bytes(b"new\n")  # shorter than what was read: started over
    assert tail.read() == (True, ["new"])


def test_flat_series_get_a_fixed_range_and_others_automatic() -> None:
    from wmtp_studio.tui.widgets.charts import y_range

    # float noise around 1: drawn flat at 1.0 within +/- 5 % (the level rounded to a tenth of the pad, 0.005 -> 0.001)
    lo, hi, level = y_range([1.0, 1.0000001, 0.99999994])
    assert (lo, hi, level) == (pytest.approx(0.95), pytest.approx(1.05), pytest.approx(1.0))
    assert y_range([0.0, 0.0]) == (-1.0, 1.0, 0.0)  # a std of exactly 0: +/- 1 around it
    assert y_range([0.5, 0.9]) == (0.5, 0.9, None)  # a real curve: its own limits
    assert y_range([float("nan")]) == (0.0, 1.0, None)
