"""The quickstart offer: what the dashboard asks an empty studio on its first start (and the palette's Quickstart
command asks any time), and the choices: fast, thorough, every algorithm, not now."""

from __future__ import annotations

from wmtp_studio.submit import QUICKSTART_ALGORITHMS, QUICKSTART_ALL_ALGORITHMS, QUICKSTART_DURATION
from wmtp_studio.tui.pickers import ChoiceModal

QUICKSTART_QUESTION = (
    "The studio has no runs yet. Queue the quickstart comparison?\n\n"
    "It pre-trains a tiny model on a generated code task, fine-tunes it with ntp, baseline-mtp, critic-wmtp "
    "and rho1-wmtp, and evaluates pass@1 on held-out problems. With one fine-tuning seed it takes "
    f"{QUICKSTART_DURATION}; three seeds take about 3x as long and show which differences are within seed noise."
)
QUICKSTART_CHOICES = (
    ("1", "Fast: 1 seed"),
    ("3", "Thorough: 3 seeds, seed noise measured (about 3x as long)"),
    (
        "all",
        f"Every algorithm: 1 seed, {len(QUICKSTART_ALL_ALGORITHMS)} fine-tunes, adding "
        + ", ".join(a for a in QUICKSTART_ALL_ALGORITHMS if a not in QUICKSTART_ALGORITHMS),
    ),
    ("no", "Not now"),
)


class QuickstartOffer(ChoiceModal):
    """The quickstart question (wrapped to the dialog's width) and its choices: fast, thorough, every algorithm,
    not now."""

    DEFAULT_CSS = """
    QuickstartOffer > Vertical { width: 80; }
    QuickstartOffer Label { width: 1fr; margin-bottom: 1; }
    """

    def __init__(self, question: str) -> None:
        super().__init__(question, QUICKSTART_CHOICES)
