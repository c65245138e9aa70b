"""Dashboard screenshots of the real app under Pilot: the SVG places every character in its terminal cell (so
YAML indentation and the footer's spaces survive real viewers), and the PNG rendered by librsvg shows them."""

from __future__ import annotations

import html
import io
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rich.console import Console
from sqlalchemy.engine import Engine
from textual.pilot import Pilot
from textual.widgets import OptionList, Static

from tests.tui.conftest import RECIPES, settle, until
from wmtp_studio.settings import Settings
from wmtp_studio.tui.app import StudioApp, create_app
from wmtp_studio.tui.screenshot import RENDERER, cell_positions, fix_svg, screenshot_svg, svg_to_png

CELL = 20 * 0.61
"""Rich's SVG geometry: a 20 px font, cells 0.61 of it wide."""
RUN = re.compile(r"<text ([^>]*)>(.*?)</text>")
CELLS = re.compile(r'<tspan x="([^"]*)">([^<]*)</tspan>')
LINE = re.compile(r"line-(\d+)\)")


def _app(settings: Settings) -> StudioApp:
    return create_app(
        settings=settings, embedded_worker=False, offer_quickstart=False, recipes_dir=RECIPES, poll_s=0.05
    )


async def open_tiny_ntp(pilot: Pilot[Any]) -> None:
    """The Recipes screen (key 3) with tiny-ntp.yaml open in the YAML editor."""
    await pilot.press("3")
    await until(pilot, lambda: type(pilot.app.screen).__name__ == "RecipesScreen", "the recipes screen")
    options = pilot.app.screen.query_one("#recipe-list", OptionList)
    await until(pilot, lambda: options.option_count > 0, "the recipe list")
    options.focus()
    options.highlighted = next(
        i for i in range(options.option_count) if options.get_option_at_index(i).prompt == "tiny-ntp.yaml"
    )
    await pilot.press("enter")
    status = pilot.app.screen.query_one("#validation", Static)
    await until(pilot, lambda: str(status.render()).startswith("valid"), "tiny-ntp to load")


def grid_rows(svg: str) -> dict[int, str]:
    """The terminal text as the SVG places it: each character at column round(x / cell) of its line. Checks on
    the way that every character of a run has its own positioned `<tspan>` and that spaces are preserved."""
    rows: dict[int, list[str]] = {}
    for attrs, body in RUN.findall(svg):
        line = LINE.search(attrs)
        if line is None:
            continue  # the window title
        assert 'xml:space="preserve"' in attrs and "textLength" not in attrs, attrs
        cells = CELLS.findall(body)
        assert "".join(f'<tspan x="{x}">{ch}</tspan>' for x, ch in cells) == body, f"a tspan per cell: {body}"
        row = rows.setdefault(int(line[1]), [" "] * 200)
        for x, ch in cells:
            assert len(html.unescape(ch)) == 1, ch
            row[round(float(x) / CELL)] = html.unescape(ch).replace("\xa0", " ")
    return {n: "".join(r).rstrip() for n, r in rows.items()}


def first_ink(image: Image.Image, top: float, x0: float, x1: float) -> int:
    """The first pixel column in [x0, x1) of the text band starting at `top` that differs clearly from the
    band's background (its most common colour)."""
    xs, ys = range(round(x0), round(x1)), range(round(top) + 2, round(top + 22))
    pixels = {(x, y): image.getpixel((x, y)) for x in xs for y in ys}
    bg = Counter(pixels.values()).most_common(1)[0][0]
    assert isinstance(bg, tuple)
    for x in xs:
        for y in ys:
            px = pixels[x, y]
            assert isinstance(px, tuple)
            if max(abs(a - b) for a, b in zip(px, bg, strict=True)) > 80:
                return x
    raise AssertionError(f"no text between x={x0} and x={x1} at y={top}")


def test_cell_positions_give_wide_characters_two_cells() -> None:
    # "a", "語" (2 cells), combining acute (0 cells: on the "b" before it), "c": cells 0, 1, 3, 3, 4
    assert cell_positions("a語b\u0301c", 10.0, 2.0) == [10.0, 12.0, 16.0, 16.0, 18.0]


async def test_svg_screenshot_keeps_yaml_indentation_and_footer_spaces(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    app = _app(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_tiny_ntp(pilot)
        app.deliver_screenshot("recipes.svg", str(tmp_path))
        shot = tmp_path / "recipes.svg"
        await until(pilot, lambda: shot.is_file() and shot.read_text().endswith("</svg>\n"), "the SVG")
    rows = "\n".join(grid_rows(shot.read_text()).values())
    yaml = (RECIPES / "tiny-ntp.yaml").read_text().splitlines()
    for n in range(4, 13):  # model: and its indented keys, the tokenizer, data: and its keys
        line = f"{n:>2}  {yaml[n - 1][:60]}"  # the editor's gutter: the line number, two spaces
        assert line in rows, f"{line!r} not in the screenshot"
    assert "^p palette" in rows.splitlines()[39]


def run_at(svg: str, text: str) -> tuple[float, float]:
    """(x of its first cell, top of its text band) of the run showing `text`, in the PNG's pixels: Rich draws
    the terminal at translate(9, 41) and puts a run's baseline 20 px below its band's top."""
    for attrs, body in RUN.findall(svg):
        cells = CELLS.findall(body)
        if "".join(html.unescape(ch) for _, ch in cells).replace("\xa0", " ") == text:
            y = float(re.search(r' y="([^"]*)"', attrs)[1])  # type: ignore[index]
            return 9 + float(cells[0][0]), 41 + y - 20
    raise AssertionError(f"no run {text!r} in the SVG")


@pytest.mark.skipif(
    shutil.which(RENDERER) is None, reason=f"{RENDERER} not installed (Debian package librsvg2-bin)"
)
async def test_png_screenshot_renders_the_indentation(settings: Settings, engine: Engine) -> None:
    app = _app(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_tiny_ntp(pilot)
        svg = screenshot_svg(app)
        await pilot.press("ctrl+p", *"Screenshot (PNG)", "enter")
        folder = settings.home / "screenshots"
        await until(pilot, lambda: any(folder.glob("*.png")), "the PNG in <home>/screenshots")
        await settle(pilot)
    pngs = list(folder.glob("*.png"))
    assert len(pngs) == 1 and not list(folder.glob("*.svg"))
    image = Image.open(pngs[0]).convert("RGB")
    width, height = (float(v) for v in re.search(r'viewBox="0 0 (\S+) (\S+)"', svg).groups())  # type: ignore[union-attr]
    assert image.size == (round(width), round(height))
    # librsvg draws "model:" at its cell and "  n_heads: 4" two cells (2 x 12.2 px) further right: before the
    # fix it dropped the leading no-break spaces and both started at the same pixel.
    x_model, top_model = run_at(svg, "model: ")
    x_heads, top_heads = run_at(svg, "  n_heads: 4 ")
    assert x_model == x_heads  # both runs start at the editor's first text column
    shift = first_ink(image, top_heads, x_heads, x_heads + 8 * CELL) - first_ink(
        image, top_model, x_model, x_model + 8 * CELL
    )
    assert 1.5 * CELL < shift < 2.5 * CELL, shift


async def test_png_without_the_renderer_says_what_to_install(
    settings: Settings, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a real PATH without rsvg-convert on it
    app = _app(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.deliver_png_screenshot()
        await settle(pilot)
        messages = [n.message for n in app._notifications]
    assert any("rsvg-convert" in m and "librsvg2-bin" in m for m in messages), messages
    assert not list((settings.home / "screenshots").glob("*.png"))


@pytest.mark.skipif(
    shutil.which(RENDERER) is None, reason=f"{RENDERER} not installed (Debian package librsvg2-bin)"
)
def test_png_keeps_chart_dots_inside_their_frame() -> None:
    """A chart row as the dashboard draws it: 27 orange braille cells, then a white frame at column 27. Rich's
    own SVG put the last dots 5 cells past the frame in librsvg (x = 401 px against the frame's 338.4)."""
    dots = "⠉⠁⠉⠉⠈⠒⠑⠒⠒⠁⠈⠢⠤⠔⠒⠤⠤⠤⠤⠔⠊⠉⠢⠤⠤⠤⠤"
    console = Console(
        record=True, width=40, file=io.StringIO(), force_terminal=True, color_system="truecolor"
    )
    console.print(f"[#ff8800]{dots}[/][#ffffff]│[/]")
    image = Image.open(io.BytesIO(svg_to_png(fix_svg(console.export_svg(title="chart"))))).convert("RGB")
    band = range(41, 41 + 24)  # row 0 of the terminal, drawn at translate(9, 41)
    orange = [x for x in range(image.width) for y in band if is_orange(image.getpixel((x, y)))]
    frame = 9 + len(dots) * CELL  # 9 + 27 x 12.2 = 338.4
    assert orange and max(orange) < frame, (max(orange), frame)
    assert min(orange) < 9 + CELL  # and the first dot in the first cell


def is_orange(px: Any) -> bool:
    return bool(px[0] > 150 and px[2] < 100)
