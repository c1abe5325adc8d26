"""Plugins that break their contracts, for the bad-input tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nsa.contracts import Completion, Span, StepItem


class OverlapSegmenter:
    """Returns overlapping spans, which do not tile the text."""

    def split(self, text: str) -> list[Span]:
        return [(0, len(text)), (0, len(text))]


class ShortSampler:
    """Promises two answers per prompt and returns one: a broken sampler plugin."""

    num_samples = 2

    def sample(self, model_dir: str, prompt_ids: Sequence[Sequence[int]]) -> list[list[Completion]]:
        return [[Completion([0], [0.0])] for _ in prompt_ids]


class IterableJudge:
    """Takes any iterable of items, wider than the contract's Sequence: a type checker accepts it."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def score(self, items: Iterable[StepItem]) -> list[list[float | None]]:
        return [[1.0] * len(item.spans) for item in items]


class ListJudge:
    """Takes only a list where nsa passes any Sequence: a type checker rejects it."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def score(self, items: list[StepItem]) -> list[list[float | None]]:
        return [[1.0] * len(item.spans) for item in items]


class SequenceSegmenter:
    """Returns a Sequence where nsa expects a list."""

    def split(self, text: str) -> Sequence[Span]:
        return [(0, len(text))]
