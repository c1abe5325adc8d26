"""nsa's one way to warn: the ``nsa`` logger, one line on stderr, ``nsa: warning: ...`` or
``nsa: notice: ...``.

Core calls ``warn`` and ``notice``; a plugin logs to a logger under ``nsa`` (``logging.getLogger
(__name__)`` in a module of ``nsa.plugins``, or ``"nsa.<name>"`` in a third-party package) and
gets the same line. A researcher silences or redirects them as any Python logging:
``logging.getLogger("nsa").setLevel(logging.ERROR)``. Records also propagate to the root
logger, so pytest's ``caplog`` and an application's own handlers see them.
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("nsa")


class _Stderr(logging.Handler):
    """Writes to ``sys.stderr`` as it is when the record comes (a StreamHandler keeps the stream
    of its creation, which misses pytest's capsys and any later redirection)."""

    def emit(self, record: logging.LogRecord) -> None:
        kind = "warning" if record.levelno >= logging.WARNING else "notice"
        print(f"nsa: {kind}: {record.getMessage()}", file=sys.stderr)


if not any(isinstance(h, _Stderr) for h in LOGGER.handlers):  # once, even if this module is reloaded
    LOGGER.addHandler(_Stderr(logging.INFO))
    LOGGER.setLevel(logging.INFO)


def warn(message: str) -> None:
    """Something the researcher should act on (data dropped, a resume that is not exact)."""
    LOGGER.warning(message)


def notice(message: str) -> None:
    """Something nsa decided for the researcher (a fallback), said once."""
    LOGGER.info(message)
