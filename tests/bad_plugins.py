"""Plugins that break their contracts, for the bad-input tests."""

from __future__ import annotations

from nsa.contracts import Span


class OverlapSegmenter:
    """Returns overlapping spans, which do not tile the text."""

    def split(self, text: str) -> list[Span]:
        return [(0, len(text)), (0, len(text))]
