"""Charts of metric series (textual-plotext), the run's curves panel, and a progress line with a loss sparkline."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from textual.app import ComposeResult
from textual.containers import Grid, Horizontal
from textual.events import Resize
from textual.widgets import Label, ProgressBar, Sparkline
from textual_plotext import PlotextPlot

from wmtp_studio.tui.series import Series, SeriesStore, downsample

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
    """Named series over steps, overlaid; each drawn downsampled to the chart's width (redrawn on resize)."""

    DEFAULT_CSS = """
    LineChart { height: 1fr; min-height: 8; }
    """

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self._series: dict[str, Series] = {}
        self.drawn: dict[str, tuple[list[float], list[float]]] = {}
        """What the last draw plotted, per label: (steps, values) after downsampling."""

    def draw(self, series: Mapping[str, Series | None]) -> None:
        self._series = {label: s for label, s in series.items() if s is not None and len(s)}
        # One min/max pair per two columns: at most about one point per column. Plotext rasterises every joining
        # segment, so noisy series at two points per column took twice as long to build (measured ~60 ms for
        # five series at 58 columns) for no visible gain.
        buckets = max((self.size.width or DEFAULT_WIDTH) // 2, 10)
        self.drawn = {label: s.downsample(buckets) for label, s in self._series.items()}
        plt = self.plt
        plt.clear_data()
        plt.title(self.title if self.drawn else f"{self.title} (no data yet)")
        for label, (xs, ys) in self.drawn.items():
            plt.plot(xs, ys, label=label, marker="braille")
        plt.ylim(*flat_range([y for _, ys in self.drawn.values() for y in ys]))
        self.refresh()

    def on_resize(self, event: Resize) -> None:
        if self._series:
            self.draw(self._series)


def flat_range(values: Sequence[float]) -> tuple[float | None, float | None]:
    """y limits for a (nearly) flat series, so float noise is not drawn as a curve: +/- 0.1 % around it (e.g.
    a uniform weight entropy of 1 +/- 1e-7 is drawn as the flat line it is); (None, None) = automatic."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None, None
    lo, hi = min(finite), max(finite)
    pad = max(1e-3 * max(abs(lo), abs(hi)), 1e-9)
    return (lo - pad, hi + pad) if hi - lo < pad else (None, None)


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
    RunProgress Label { width: auto; padding: 0 1; }
    RunProgress Sparkline { width: 1fr; height: 1; }
    """

    def compose(self) -> ComposeResult:
        yield ProgressBar(show_eta=False)
        yield Label("")
        yield Sparkline([])

    def show(self, step: int, total: int, series: Series | None, label: str = "") -> None:
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
        self.query_one("#chart-loss", LineChart).draw(
            {"loss": series.get("train/loss")} | {f"head{h}": series.get(f"train/head{h}/ce") for h in heads}
        )
        self.query_one("#chart-val", LineChart).draw(
            {"val loss": series.get("val/val_loss")}
            | {f"head{h}": series.get(f"val/head{h}/val_ce") for h in heads}
        )
        self.query_one("#chart-lr", LineChart).draw({"lr": series.get("train/lr")})
        self.query_one("#chart-grad", LineChart).draw({"grad norm": series.get("train/grad_norm")})
