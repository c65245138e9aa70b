"""One training sequence as highlighted code, each token's background shaded by the weight one head gave it."""

from __future__ import annotations

from collections.abc import Sequence

from rich.style import Style
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Label, Static

from wmtp_studio.series import Blob
from wmtp_studio.tui.widgets.heatmap import shade


def weighted_code(tokens: Sequence[str], weights: Sequence[float]) -> Text:
    """Python-highlighted text of `tokens`, with backgrounds from dark (weight 0) to yellow (the largest)."""
    code = "".join(tokens)
    text = Syntax(code, "python", theme="ansi_dark").highlight(code)
    text.rstrip()
    peak = max(weights, default=0.0) or 1.0
    start = 0
    for token, weight in zip(tokens, weights, strict=False):
        if weight > 0:
            style = Style(bgcolor=shade(weight / peak), color="black" if weight / peak > 0.5 else None)
            text.stylize(style, start, start + len(token))
        start += len(token)
    return text


class TokenView(Static):
    """The latest `top_tokens` sequence of the run for one head (zero-weight tokens are left unshaded)."""

    DEFAULT_CSS = """
    TokenView { height: auto; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("no token weights yet", id=id)
        self.tokens: list[str] = []

    def show(self, tokens: Sequence[str], weights: Sequence[float]) -> None:
        self.tokens = list(tokens)
        self.update(weighted_code(tokens, weights))


class TokensPanel(VerticalScroll):
    """The latest sequence shaded for the selected head, and that head's top-weighted tokens in a table."""

    DEFAULT_CSS = """
    TokensPanel > Label { padding: 0 1; color: $text-muted; }
    TokensPanel DataTable { height: auto; max-height: 14; margin-top: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Label("", id="tokens-caption", markup=False)
        yield TokenView(id="token-view")
        table: DataTable[Text] = DataTable(id="top-tokens", cursor_type="row")
        for label, key in (("head", "head"), ("position", "pos"), ("token", "token"), ("weight", "weight")):
            table.add_column(label, key=key)
        yield table

    def draw(self, blob: Blob | None, head: int) -> None:
        data = blob.payload.get("data", {}) if blob else {}
        weights: list[list[float]] = data.get("weights", [])
        caption = self.query_one("#tokens-caption", Label)
        table = self.query_one("#top-tokens", DataTable)
        table.clear()
        if blob is None or head >= len(weights):
            caption.update(
                "no token weights yet (the trainer writes them every train.top_tokens_every steps)"
            )
            return
        caption.update(
            f"step {blob.step}, head {head} of {len(weights)}: background = the token's loss weight"
        )
        self.query_one(TokenView).show(data.get("tokens", []), weights[head])
        for top in data.get("top", []):
            if top.get("head") == head:
                cells = (str(head), str(top["pos"]), repr(top["token"]), f"{top['weight']:.4f}")
                table.add_row(*map(Text, cells))  # Text: a token like "[" is not markup
