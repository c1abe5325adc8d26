"""Plain text tables, as nsa prints and logs them (``nsa evaluate``'s results, ``nsa sweep``'s summary)."""

from __future__ import annotations


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns as wide as their widest cell, two spaces apart; the first column (a name) is
    left-aligned, the others (numbers) right-aligned so their digits line up."""
    widths = [max(len(x) for x in [title, *(row[i] for row in rows)]) for i, title in enumerate(header)]
    return "\n".join(
        "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(line, widths)))
        for line in [header, *rows]
    )
