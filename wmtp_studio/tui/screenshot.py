"""Dashboard screenshots that look the same in every viewer: an SVG with each character in its own cell, and PNG.

Textual saves Rich's SVG export: one `<text>` per styled run of characters, its spaces written as no-break
spaces, stretched to the run's width with `textLength`. Real viewers disagree with that: librsvg (GNOME's image
viewer, `rsvg-convert`) drops leading no-break spaces, so YAML loses its indentation, right-aligned numbers move
left and the footer reads "^ppalette", and it lays braille chart dots out wider than their cells, past the
chart's frame.

`fix_svg` gives every character its own `<tspan>` at its cell's x (wide characters take two cells) and drops
`textLength`, so no glyph's width can move another character. (A list of x positions on the run says the same,
but librsvg 2.54 still misplaces braille under it: the lines overshoot their frame by 2-3 cells.) Spaces stay
no-break spaces and each run gets `xml:space="preserve"`: librsvg drops leading no-break spaces without it, and
Chromium collapses spaces unless the attribute is on the `<text>` itself.

`svg_to_png` renders the SVG with librsvg's `rsvg-convert` (Debian package librsvg2-bin): a system tool, so PNG
is optional and its absence is a StudioError that says what to install.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from datetime import datetime
from typing import Any

from rich.cells import get_character_cell_size
from textual.app import App

from wmtp_studio.errors import StudioError

TEXT = re.compile(r"<text (?P<attrs>[^>]*)>(?P<text>[^<]*)</text>")
ATTR = re.compile(r'([\w:-]+)="([^"]*)"')
RENDERER = "rsvg-convert"
RENDERER_PACKAGE = "librsvg2-bin"


def cell_positions(chars: str, x0: float, cell: float) -> list[float]:
    """The x of each character of a run starting at `x0` on a grid of `cell`-wide columns: a wide character
    (CJK, some emoji) takes two columns; a zero-width one (a combining mark) sits on the character before it."""
    xs: list[float] = []
    x = last = x0
    for ch in chars:
        width = get_character_cell_size(ch)
        if width == 0:
            xs.append(last)
            continue
        xs.append(x)
        last, x = x, x + width * cell
    return xs


def escape_cell(ch: str) -> str:
    return "&#160;" if ch in " \xa0" else html.escape(ch, quote=False)


def fix_svg(svg: str) -> str:
    """Rich's terminal SVG with every character positioned at its own cell and spaces kept (see the module doc).

    Rich writes each run as `<text class=.. x=.. y=.. textLength=.. clip-path=..>escaped text</text>`, with
    `textLength = cell width * len(text)`: the cell width is read from each run itself."""

    def fix_run(match: re.Match[str]) -> str:
        attrs = dict(ATTR.findall(match["attrs"]))
        chars = html.unescape(match["text"])
        if "textLength" not in attrs or "x" not in attrs or not chars:
            return match[0]  # the window title: centred, not on the grid
        xs = cell_positions(chars, float(attrs["x"]), float(attrs.pop("textLength")) / len(chars))
        joined = " ".join(f'{k}="{v}"' for k, v in attrs.items())
        cells = "".join(
            f'<tspan x="{round(x, 2):g}">{escape_cell(ch)}</tspan>' for x, ch in zip(xs, chars, strict=True)
        )
        return f'<text xml:space="preserve" {joined}>{cells}</text>'

    return TEXT.sub(fix_run, svg)


def screenshot_svg(app: App[Any]) -> str:
    """The app's current screen as a corrected SVG (what the palette's Screenshot command saves)."""
    return fix_svg(app.export_screenshot())


def svg_to_png(svg: str) -> bytes:
    """Render an SVG to PNG bytes with `rsvg-convert`; a StudioError when it is missing or fails."""
    exe = shutil.which(RENDERER)
    if exe is None:
        raise StudioError(
            f"PNG screenshots need {RENDERER} (Debian/Ubuntu: apt install {RENDERER_PACKAGE}); "
            "the SVG screenshot (palette: Screenshot) needs nothing"
        )
    try:
        done = subprocess.run(
            [exe, "--format", "png"], input=svg.encode(), capture_output=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise StudioError(f"{RENDERER} did not finish within {exc.timeout:g} s") from exc
    if done.returncode != 0 or not done.stdout:
        reason = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        raise StudioError(f"{RENDERER} could not render the screenshot: {reason}")
    return done.stdout


def default_filename(title: str, suffix: str, time_format: str | None = None) -> str:
    """`<title> <local time>.<suffix>`, with characters that some file systems reject left out."""
    stamp = datetime.now().strftime(time_format or "%Y-%m-%dT%H_%M_%S")
    name = "".join(c for c in f"{title} {stamp}" if c.isalnum() or c in " -_")
    return f"{name}.{suffix}"
