"""The weights panel: per-head weight histograms over time, weight statistics, and each algorithm's own signals
(critic value loss and explained variance, Rho-1 selected fraction, grad-wmtp's running score statistics), shown only
when the run writes them."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, VerticalScroll

from wmtp_studio.series import RunData
from wmtp_studio.tui.widgets.charts import BarsChart, LineChart, step_range
from wmtp_studio.tui.widgets.heatmap import Heatmap

OPTIONAL = (
    "chart-critic1",
    "chart-ev",
    "chart-critic2",
    "chart-ev2",
    "chart-selected",
    "chart-score-mu",
    "chart-score-sigma",
)
"""Charts hidden until their run writes the metrics they draw."""


def informative_head(data: RunData) -> int:
    """The head the Weights tab opens on: the first whose weights vary (a weight std above 0 at some step, else a
    latest histogram with more than one non-empty bin), else 0. Head 0 is all ones for NTP, baseline MTP and
    Rho-1 with keep_head0, where the weighting shows in heads 1 and up."""
    s, hists = data.series, data.hists
    for head in range(max(hists.n_heads, len(s.heads()))):
        std = s.get(f"train/head{head}/w_std")
        if (std is not None and max(std.values, default=0.0) > 1e-6) or sum(
            c > 0 for c in hists.latest(head)
        ) > 1:
            return head
    return 0


class WeightsPanel(VerticalScroll):
    DEFAULT_CSS = """
    WeightsPanel > Horizontal { height: 16; }
    WeightsPanel Heatmap { width: 3fr; }
    WeightsPanel BarsChart { width: 2fr; }
    WeightsPanel > Grid { grid-size: 2; grid-rows: 14; grid-gutter: 0 1; height: auto; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Heatmap(id="heatmap")
            yield BarsChart("latest weight histogram", id="bars")
        with Grid():
            yield LineChart("weight entropy per head", id="chart-entropy")
            yield LineChart("weight std per head", id="chart-std")
            yield LineChart("critic stage 1: value loss", id="chart-critic1")
            yield LineChart("critic stage 1: explained variance (held-out)", id="chart-ev")
            yield LineChart("critic stage 2: value loss", id="chart-critic2")
            yield LineChart("critic stage 2: explained variance (held-out)", id="chart-ev2")
            yield LineChart("rho-1: selected fraction per head", id="chart-selected")
            yield LineChart("grad: score EMA mean per head", id="chart-score-mu")
            yield LineChart("grad: score EMA std per head", id="chart-score-sigma")

    def draw(self, data: RunData, head: int) -> None:
        hists, s = data.hists, data.series
        self.query_one(Heatmap).show(hists, head)
        at = f"(head {head}, step {hists.steps[-1]})" if hists.steps else ""
        self.query_one(BarsChart).draw(hists.edges, hists.latest(head), at)
        heads = s.heads()
        per_head = {
            "chart-entropy": "w_entropy",
            "chart-std": "w_std",
            "chart-selected": "selected_fraction",
            "chart-score-mu": "score_mu",
            "chart-score-sigma": "score_sigma",
        }
        stage2 = {
            chart_id: {f"head{h}": s.get(f"train/head{h}/{metric}") for h in heads}
            for chart_id, metric in per_head.items()
        } | {
            "chart-critic2": {
                "value loss": s.get("train/value_loss"),
                "held-out": s.get("val/heldout_value_loss"),
            },
            "chart-ev2": {"held-out": s.get("val/heldout_explained_variance")},
        }
        stage1 = {
            "chart-critic1": {
                "train": s.get("stage1/train_value_loss"),
                "held-out": s.get("stage1/heldout_value_loss"),
            },
            "chart-ev": {"held-out": s.get("stage1/heldout_explained_variance")},
        }
        # Each stage counts its own steps: the charts of one stage share their x axis.
        for charts in (stage2, stage1):
            steps = step_range(series for drawn in charts.values() for series in drawn.values())
            for chart_id, drawn in charts.items():
                self._chart(chart_id).draw(drawn, steps)
        for chart_id in OPTIONAL:
            chart = self._chart(chart_id)
            chart.display = bool(chart.drawn)

    def _chart(self, chart_id: str) -> LineChart:
        return self.query_one(f"#{chart_id}", LineChart)
