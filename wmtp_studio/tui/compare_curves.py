"""What the compare screen's Curves tab draws: the metric choices (head 0's cross-entropy and the total losses,
each training and validation together, then every metric the runs share) and the runs' curves of the chosen
one, overlaid on a plotext figure. Pure functions of the figure and the series; the screen owns the widgets."""

from __future__ import annotations

from collections.abc import Sequence

from textual_plotext.plot import Plot

from wmtp_studio.models import Run
from wmtp_studio.series import SeriesStore
from wmtp_studio.tui.widgets.charts import PALETTE

HEAD0_CE = "train/head0/ce+val/head0/val_ce"
"""The default chart: head 0's cross-entropy (next-token prediction, weight 1) in training (solid) and on the
held-out slice (dots). Every algorithm has a head 0, so these compare across algorithms and head counts."""
LOSSES = "train/loss+val/val_loss"
"""The total losses: sums over the heads (with their coefficients), so not comparable across head counts."""
COMBINED = {
    HEAD0_CE: "head-0 CE: train (solid) and val (dots)",
    LOSSES: "total loss: train (solid) and val (dots); sums over heads",
}
MARKERS = ("hd", "dot")
"""Plotext markers of the first metric (a solid line of quarter blocks) and the second (a line of bullets)."""

Drawn = tuple[str, str, tuple[int, int, int], str]
"""A drawn series: (run, metric, colour, marker)."""


def shared_metrics(runs: Sequence[Run], series: dict[int, SeriesStore]) -> list[str]:
    """The metrics every run has, sorted."""
    named = [set(series.get(r.id or 0, SeriesStore()).names()) for r in runs]
    return sorted(set.intersection(*named)) if named else []


def metric_names(value: object) -> list[str]:
    """The metrics of the metric picker's value (a combined choice names two; nothing chosen: head 0's CE)."""
    return (value if isinstance(value, str) else HEAD0_CE).split("+")


def draw_curves(
    plt: Plot, width: int, runs: Sequence[Run], series: dict[int, SeriesStore], value: object
) -> list[Drawn]:
    """Draw the curves of the metric picker's `value`, each downsampled to `width`, on a cleared figure; what
    was drawn."""
    plt.clear_figure()
    names, drawn, steps = metric_names(value), [], []
    # One colour and legend entry per run; a second metric (val) is drawn in bullets, under every run's
    # solid line (a line of bullets between sparse val points would hide the training curves).
    for j, name in reversed(list(enumerate(names))):
        for i, run in enumerate(runs):
            curve = series.get(run.id or 0, SeriesStore()).get(name)
            if curve is None or not len(curve):
                continue
            xs, ys = curve.downsample(width)
            label = str(run.name or run.id) if j == 0 else None
            color, marker = PALETTE[i % len(PALETTE)], MARKERS[min(j, 1)]
            plt.plot(xs, ys, label=label, color=color, marker=marker)
            drawn.append((str(run.name or run.id), name, color, marker))
            steps += [xs[0], xs[-1]]
    if steps:  # whole steps: plotext's own ticks split the range into fractions (78.8)
        ticks = sorted({round(min(steps) + (max(steps) - min(steps)) * t / 4) for t in range(5)})
        plt.xticks([float(t) for t in ticks], [str(t) for t in ticks])
    plt.title(COMBINED.get(value, " + ".join(names)) if isinstance(value, str) else " + ".join(names))
    plt.xlabel("step")
    return drawn
