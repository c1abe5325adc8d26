"""The one error type a user sees: a single line naming what is wrong and how to fix it."""


class NSAError(ValueError):
    """A user-facing error. ``nsa`` prints ``nsa: error: <message>`` and exits 2, no traceback."""
