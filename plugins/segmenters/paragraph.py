"""Steps are paragraphs: text separated by blank lines.

Each step keeps its trailing blank-line separator, so the spans tile the response exactly
and concatenate back to it. A response with no blank line is one step.
"""

from __future__ import annotations

import re

from nsa.contracts import Span

# a blank line, also with Windows line ends ("\r\n\r\n"), and the whitespace after it
BLANK_LINES = re.compile(r"\n[ \t\r]*\n\s*")


class ParagraphSegmenter:
    """Split at blank lines; paragraphs shorter than ``min_chars`` merge into the next."""

    def __init__(self, min_chars: int = 0) -> None:
        self.min_chars = min_chars

    def split(self, text: str) -> list[Span]:
        cuts = [m.end() for m in BLANK_LINES.finditer(text) if m.end() < len(text)]
        spans: list[Span] = []
        start = 0
        for cut in cuts:
            if cut - start >= self.min_chars:
                spans.append((start, cut))
                start = cut
        if text:  # cuts stop short of the end, so a last step always remains
            spans.append((start, len(text)))
        return spans
