"""Exports of the compare screen: exact Markdown, LaTeX and CSV text, and real PNG/SVG files from matplotlib."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from wmtp_studio.compare.export import (
    Interval,
    PValue,
    Series,
    Table,
    chart_image,
    export_path,
    format_cell,
    latex_escape,
    render,
    to_csv,
    to_latex,
    to_markdown,
)

SIGN, RANK = "exact sign test", "exact Wilcoxon signed-rank"
TABLE = Table(
    columns=("run", "seeds", "generated pass@1", "Δ generated pass@1", "p generated pass@1", "p seeds"),
    rows=(
        ("tiny_ntp", 1, Interval(0.45, 0.3, 0.6), "baseline", None, None),
        (
            "tiny|mtp 5%",
            1,
            Interval(0.5, 0.35, 0.65),
            Interval(0.05, -0.1, 0.2),
            PValue(0.076812744140625, SIGN),
            PValue(0.25, RANK, 0.25),
        ),
        ("rho1", 1, None, None, PValue(0.0002, RANK), None),
    ),
    note="p: the test named in each cell",
)


def test_cells_read_as_numbers_with_ci_and_a_dash_for_none() -> None:
    assert format_cell(Interval(0.45, 0.3, 0.6)) == "0.450 [0.300, 0.600]"
    assert format_cell(Interval(0.45)) == "0.450"
    assert format_cell(None) == "–"
    assert format_cell(0.0002) == "2.0e-04"  # a small p-value does not read as 0.000
    assert format_cell(0.0) == "0.000"
    assert format_cell(3) == "3"
    assert format_cell(PValue(0.0625, SIGN)) == "0.0625 (exact sign test)"  # three significant digits
    assert format_cell(PValue(0.25, RANK, 0.25)) == "0.25 (exact Wilcoxon signed-rank; min 0.25)"


def test_markdown_table_is_exact() -> None:
    assert to_markdown(TABLE) == (
        "| run | seeds | generated pass@1 | Δ generated pass@1 | p generated pass@1 | p seeds |\n"
        "|---|---:|---:|---|---:|---:|\n"
        "| tiny_ntp | 1 | 0.450 [0.300, 0.600] | baseline | – | – |\n"
        "| tiny\\|mtp 5% | 1 | 0.500 [0.350, 0.650] | 0.050 [-0.100, 0.200] | 0.0768 (exact sign test) "
        "| 0.25 (exact Wilcoxon signed-rank; min 0.25) |\n"
        "| rho1 | 1 | – | – | 0.0002 (exact Wilcoxon signed-rank) | – |\n"
        "\n"
        "p: the test named in each cell\n"
    )


def test_latex_table_is_booktabs_with_escaped_underscore_and_percent() -> None:
    assert to_latex(TABLE) == (
        "\\begin{table}[t]\n"
        "\\centering\n"
        "\\begin{tabular}{lrrlrr}\n"
        "\\toprule\n"
        "run & seeds & generated pass@1 & $\\Delta$ generated pass@1 & p generated pass@1 & p seeds \\\\\n"
        "\\midrule\n"
        "tiny\\_ntp & 1 & 0.450 [0.300, 0.600] & baseline & -- & -- \\\\\n"
        "tiny|mtp 5\\% & 1 & 0.500 [0.350, 0.650] & 0.050 [-0.100, 0.200] & 0.0768 (exact sign test) & "
        "0.25 (exact Wilcoxon signed-rank; min 0.25) \\\\\n"
        "rho1 & 1 & -- & -- & 0.0002 (exact Wilcoxon signed-rank) & -- \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\caption{p: the test named in each cell}\n"
        "\\end{table}\n"
    )
    assert latex_escape("a&b#c$d{e}~^\\") == (
        "a\\&b\\#c\\$d\\{e\\}\\textasciitilde{}\\textasciicircum{}\\textbackslash{}"
    )


def test_csv_splits_intervals_and_keeps_full_precision() -> None:
    text = to_csv(TABLE)
    assert text.splitlines()[0] == (
        "run,seeds,generated pass@1,generated pass@1 low,generated pass@1 high,"
        "Δ generated pass@1,Δ generated pass@1 low,Δ generated pass@1 high,"
        "p generated pass@1,p generated pass@1 test,p generated pass@1 min,p seeds,p seeds test,p seeds min"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["run"] for r in rows] == ["tiny_ntp", "tiny|mtp 5%", "rho1"]
    assert float(rows[1]["generated pass@1 low"]) == 0.35
    assert float(rows[1]["p generated pass@1"]) == 0.076812744140625
    assert (rows[1]["p generated pass@1 test"], rows[1]["p generated pass@1 min"]) == (SIGN, "")
    assert (float(rows[1]["p seeds"]), rows[1]["p seeds test"], float(rows[1]["p seeds min"])) == (
        0.25,
        RANK,
        0.25,
    )
    # a text cell in an interval column keeps its text; no value is an empty cell
    assert (rows[0]["Δ generated pass@1"], rows[0]["Δ generated pass@1 low"]) == ("baseline", "")
    assert rows[2]["generated pass@1"] == "" and rows[0]["p generated pass@1"] == ""


def test_charts_are_real_png_and_svg() -> None:
    series = [Series("ntp", ((0, 5.0), (10, 3.0))), Series("baseline-mtp", ((0, 5.5), (10, 2.5)))]
    png = chart_image(series, fmt="png", title="train/loss", ylabel="train/loss")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    svg = chart_image(series, fmt="svg", title="train/loss", ylabel="train/loss")
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert b"baseline-mtp" in svg  # the legend names the runs
    assert chart_image(series, fmt="svg", title="t", ylabel="y") == chart_image(
        series, fmt="svg", title="t", ylabel="y"
    )  # no date in the file


def test_render_and_export_path() -> None:
    assert render("md", table=TABLE, series=[], title="", ylabel="").decode() == to_markdown(TABLE)
    assert render("csv", table=TABLE, series=[], title="", ylabel="").decode() == to_csv(TABLE)
    when = datetime(2026, 11, 27, 9, 5, 3)
    assert export_path(Path("home"), "set3", "tex", when) == Path(
        "home/exports/compare-set3-20261127-090503.tex"
    )
