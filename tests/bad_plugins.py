"""Plugins that break their contracts, for the bad-input tests."""

from __future__ import annotations

from collections.abc import Sequence

from nsa.contracts import Completion, Span


class OverlapSegmenter:
    """Returns overlapping spans, which do not tile the text."""

    def split(self, text: str) -> list[Span]:
        return [(0, len(text)), (0, len(text))]


class ShortSampler:
    """Promises two answers per prompt and returns one: a broken sampler plugin."""

    num_samples = 2

    def sample(self, model_dir: str, prompt_ids: Sequence[Sequence[int]]) -> list[list[Completion]]:
        return [[Completion([0], [0.0])] for _ in prompt_ids]
