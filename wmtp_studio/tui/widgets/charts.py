"""Charts of metric series (textual-plotext), the run's curves panel, and a progress line with a loss sparkline."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from textual.app import ComposeResult
from textual.containers import Grid, Horizontal
from textual.events import Resize
from textual.widgets import Label, ProgressBar, Sparkline
from textual_plotext import PlotextPlot
from textual_plotext.plot import Plot

from wmtp_studio.series import MetricSeries, SeriesStore, downsample

DEFAULT_WIDTH = 80
"""Columns assumed before a chart has been laid out."""
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0xE6, 0x9F, 0x00),  # orange
    (0x56, 0xB4, 0xE9),  # sky blue
    (0x00, 0x9E, 0x73),  # bluish green
    (0xCC, 0x79, 0xA7),  # reddish purple
    (0xF0, 0xE4, 0x42),  # yellow
    (0xD5, 0x5E, 0x00),  # vermillion
    (0x00, 0x72, 0xB2),  # blue
    (0x99, 0x99, 0x99),  # grey, for Okabe-Ito's black, which a dark background would hide
)
"""Line colours told apart with any colour vision (Okabe & Ito 2008), as RGB for plotext; ordered so that the
first four lines (a quickstart's algorithms) differ in hue and lightness."""


class LineChart(PlotextPlot):
    """Named series over steps, overlaid; each drawn downsampled to the chart's width (redrawn on resize).

    Lines that coincide (e.g. Rho-1's heads 1-3, which share one selection) are drawn once under one label, so
    none hides under another; the legend gets rows of its own above the lines; x ticks are whole steps."""

    DEFAULT_CSS = """
    LineChart { height: 1fr; min-height: 8; }
    """

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self._series: dict[str, MetricSeries] = {}
        self.x_range: tuple[float, float] | None = None
        """The steps the x axis spans when shared with other charts (else the data's own)."""
        self.drawn: dict[str, tuple[list[float], list[float]]] = {}
        """What the last draw plotted, per label: (steps, values) after downsampling."""
        self.lines: dict[str, tuple[list[float], list[float]]] = {}
        """The lines plotted, per legend label: coinciding series are one line (see `coinciding`)."""
        self.limits: tuple[float, float] | None = None
        """The y limits of the last draw (legend rows included)."""
        self.xticks: list[float] = []

    def draw(
        self, series: Mapping[str, MetricSeries | None], x_range: tuple[float, float] | None = None
    ) -> None:
        """Plot `series`; `x_range` (steps) is shared with other charts, e.g. validation's with training's."""
        self._series = {label: s for label, s in series.items() if s is not None and len(s)}
        self.x_range = x_range
        # One min/max pair per two columns: at most about one point per column. Plotext rasterises every joining
        # segment, so noisy series at two points per column took twice as long to build (measured ~60 ms for
        # five series at 58 columns) for no visible gain.
        buckets = max((self.size.width or DEFAULT_WIDTH) // 2, 10)
        self.drawn = {label: s.downsample(buckets) for label, s in self._series.items()}
        plt = self.plt
        plt.clear_data()
        plt.title(self.title if self.drawn else f"{self.title} (no data yet)")
        self.lines, self.limits, self.xticks = {}, None, []
        if self.drawn:
            self._draw_lines(plt)
        else:  # e.g. a resumed run's stream was cut back to nothing: drop the last draw's axes
            plt.xlim(None, None)
            plt.ylim(None, None)
            plt.xticks([])
            plt.yticks([])
        self.refresh()

    def _draw_lines(self, plt: Plot) -> None:
        lo, hi, level = y_range([v for s in self._series.values() for v in s.values])
        tol = math.inf if level is not None else 1e-3 * (hi - lo)
        groups = coinciding(self._series, tol)
        for labels in groups:
            xs, ys = self.drawn[labels[0]]
            self.lines[group_label(labels)] = (xs, ys if level is None else [level] * len(ys))
        legend = len(groups) > 1 or len(groups[0]) > 1  # one plain line: the title names it
        for label, (xs, ys) in self.lines.items():
            plt.plot(xs, ys, label=label if legend else None, marker="braille")
        # The legend covers the canvas's top rows: the lines stay below them (plotext cannot move its legend).
        rows = (self.size.height or 0) - 4  # title, frame top and bottom, x tick labels
        free = rows - len(self.lines) - 1 if legend else rows
        top = lo + (hi - lo) * rows / (free - 0.5) if 3 <= free < rows else hi  # half a row: pixels round
        self.limits = (lo, top)
        plt.ylim(lo, top)
        yticks = nice_ticks(lo, top, max(3, min(8, rows // 2)))
        plt.yticks(yticks, [tick_label(t, yticks) for t in yticks])
        xs_all = [x for xs, _ in self.drawn.values() for x in xs]
        x0, x1 = self.x_range or (min(xs_all), max(xs_all))
        x0, x1 = (x0 - 1, x1 + 1) if x1 <= x0 else (x0, x1)
        width = max(len(f"{x1:.0f}") + 4, 6)
        self.xticks = nice_ticks(
            x0, x1, max(2, min(8, ((self.size.width or DEFAULT_WIDTH) - 10) // width)), whole=True
        )
        plt.xlim(x0, x1)
        plt.xticks(self.xticks, [f"{t:.0f}" for t in self.xticks])

    def on_resize(self, event: Resize) -> None:
        if self._series:
            self.draw(self._series, self.x_range)


def y_range(values: Sequence[float]) -> tuple[float, float, float | None]:
    """(low, high, level) of the y axis. A (nearly) flat set of values, spread under 0.1 % of its size (e.g. a
    uniform weight entropy of 1 +/- 1e-7, or a std of exactly 0), gets a fixed range of +/- 5 % (+/- 1 around 0)
    about `level`, its value rounded to that range's precision, and is drawn at that level: float noise is not
    drawn as a curve, nor as a line hopping between two pixel rows, and the axis stays put as points arrive."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0, None
    lo, hi = min(finite), max(finite)
    if hi - lo > 1e-3 * max(abs(lo), abs(hi)):
        return lo, hi, None
    mid = (lo + hi) / 2
    pad = 0.05 * abs(mid) if mid else 1.0
    step = 10 ** math.floor(
        math.log10(pad / 10)
    )  # e.g. 0.001 for 1 +/- 0.05: a level of 1.0, limits 0.95, 1.05
    level, pad = round(mid / step) * step, round(pad / step) * step
    return level - pad, level + pad, level


def coinciding(series: Mapping[str, MetricSeries], tol: float) -> list[list[str]]:
    """Labels grouped by line: series at the same steps whose values all differ by at most `tol` are one line."""
    groups: list[list[str]] = []
    for label, s in series.items():
        for group in groups:
            first = series[group[0]]
            if first.steps == s.steps and all(
                abs(a - b) <= tol for a, b in zip(first.values, s.values, strict=True)
            ):
                group.append(label)
                break
        else:
            groups.append([label])
    return groups


def group_label(labels: Sequence[str]) -> str:
    """One legend label for coinciding lines: "heads 1-3 identical" for head1, head2, head3."""
    if len(labels) == 1:
        return labels[0]
    heads = [int(m.group(1)) for label in labels if (m := re.fullmatch(r"head(\d+)", label))]
    if len(heads) == len(labels):
        consecutive = heads == list(range(heads[0], heads[0] + len(heads)))
        named = f"{heads[0]}-{heads[-1]}" if consecutive else ",".join(map(str, heads))
        return f"heads {named} identical"
    return " = ".join(labels) + " (identical)"


def nice_ticks(lo: float, hi: float, n: int, *, whole: bool = False) -> list[float]:
    """About `n` ticks at multiples of 1, 2, 2.5 or 5 times a power of ten within [lo, hi] (of at least 1 when
    `whole`: steps are counted in whole steps)."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    if whole:
        step = max(1.0, step if step == round(step) else math.ceil(step))
    first = math.ceil(lo / step - 1e-9)
    return [i * step for i in range(first, math.floor(hi / step + 1e-9) + 1)]


def tick_label(value: float, ticks: Sequence[float]) -> str:
    """`value` with as many decimals as the ticks' spacing needs."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(value) or 1.0
    decimals = 0
    while decimals < 10 and abs(round(step, decimals) - step) > 1e-6 * step:
        decimals += 1
    return f"{value:.{decimals}f}"


class BarsChart(PlotextPlot):
    """One histogram as vertical bars, labelled by the bins' lower edges."""

    DEFAULT_CSS = """
    BarsChart { height: 1fr; min-height: 8; }
    """

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.counts: list[float] = []

    def draw(self, edges: Sequence[float], counts: Sequence[float], subtitle: str = "") -> None:
        self.counts = list(counts)
        plt = self.plt
        plt.clear_data()
        plt.title(f"{self.title} {subtitle}".strip() if self.counts else f"{self.title} (no data yet)")
        if self.counts:
            plt.bar([f"{e:g}" for e in edges[: len(self.counts)]], self.counts, width=0.8)
        self.refresh()


class RunProgress(Horizontal):
    """`step/total` as a progress bar, followed by a sparkline of one series (e.g. the training loss)."""

    DEFAULT_CSS = """
    RunProgress { height: 1; }
    RunProgress ProgressBar { width: auto; }
    RunProgress > Label { width: auto; padding: 0 1; }
    RunProgress Sparkline { width: 1fr; height: 1; }
    """

    def compose(self) -> ComposeResult:
        yield ProgressBar(show_eta=False)
        yield Label("")
        yield Sparkline([])

    def show(self, step: int, total: int, series: MetricSeries | None, label: str = "") -> None:
        self.query_one(ProgressBar).update(total=total or None, progress=step)
        self.query_one(Label).update(label)
        spark = self.query_one(Sparkline)
        if series is not None and len(series):
            spark.data = downsample(series.steps, series.values, max(spark.size.width // 2, 1))[1]


class CurvesPanel(Grid):
    """Training loss (total and per head), validation loss, learning rate and gradient norm."""

    DEFAULT_CSS = """
    CurvesPanel { grid-size: 2 2; grid-gutter: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield LineChart("loss (total and per-head CE)", id="chart-loss")
        yield LineChart("validation loss", id="chart-val")
        yield LineChart("learning rate", id="chart-lr")
        yield LineChart("gradient norm", id="chart-grad")

    def draw(self, series: SeriesStore) -> None:
        heads = series.heads()
        charts = {
            "#chart-loss": {"loss": series.get("train/loss")}
            | {f"head{h}": series.get(f"train/head{h}/ce") for h in heads},
            "#chart-val": {"val loss": series.get("val/val_loss")}
            | {f"head{h}": series.get(f"val/head{h}/val_ce") for h in heads},
            "#chart-lr": {"lr": series.get("train/lr")},
            "#chart-grad": {"grad norm": series.get("train/grad_norm")},
        }
        steps = step_range(s for drawn in charts.values() for s in drawn.values())
        for chart_id, drawn in charts.items():
            self.query_one(chart_id, LineChart).draw(drawn, steps)


def step_range(series: Iterable[MetricSeries | None]) -> tuple[float, float] | None:
    """The steps that some charts share as their x axis: from the first to the last step of any of `series`."""
    steps = [x for s in series if s is not None and len(s) for x in (s.steps[0], s.steps[-1])]
    return (min(steps), max(steps)) if steps else None
