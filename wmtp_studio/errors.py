"""The one error family of WMTP Studio. Front ends print these as a message and exit 2; anything else is a bug."""


class StudioError(Exception):
    """A problem the user can fix (bad input, missing file, incompatible model); the message says what."""


class RecipeError(StudioError):
    """A recipe that cannot be loaded; the message names the file and the dotted path of the field."""


class TrainingAborted(StudioError):
    """Training stopped on purpose (e.g. too many non-finite losses in a row)."""
