"""A plugin meets its contract as a type checker would judge it (nsa.conformance)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pytest

from nsa.conformance import conforms, is_subtype, mismatches
from nsa.contracts import Consensus, Segmenter, Span, StepItem, StepJudge


@pytest.mark.parametrize(
    ("sub", "sup", "expected"),
    [
        (list[StepItem], Sequence[StepItem], True),  # a list is a Sequence
        (Sequence[StepItem], list[StepItem], False),  # not every Sequence is a list
        (list[bool], Sequence[int], True),  # Sequence is covariant
        (list[bool], list[int], False),  # list is invariant: a list[int] may be appended a 2
        (tuple[int, int], tuple[int, ...], True),
        (tuple[int, ...], tuple[int, int], False),
        (tuple[int, int], Sequence[int], True),
        (list[list[float]], list[list[float | None]], False),
        (Sequence[Sequence[int]], Iterable[Iterable[int]], True),
        (int, float | None, True),  # typing's int-for-float promotion, into a union
        (float | None, float, False),  # None is not a float
        (dict[str, list[bool | None]], Mapping[str, Sequence[bool | None]], True),
        (Mapping[object, bool], Mapping[str, bool], False),  # a Mapping's keys are invariant
    ],
)
def test_is_subtype_follows_typing(sub, sup, expected):
    assert is_subtype(sub, sup) is expected


class WideJudge:
    threshold = 0.5

    def score(self, items: Iterable[StepItem], batch_size: int = 8) -> list[list[float | None]]:
        return []


class NarrowJudge:
    threshold = 0.5

    def score(self, items: list[StepItem]) -> list[list[float | None]]:
        return []


class RenamedSegmenter:
    def split(self, txt: str) -> list[Span]:
        return []


class NeedySegmenter:
    def split(self, text: str, language: str) -> list[Span]:
        return []


class UntypedSegmenter:
    def split(self, text):
        return []


def test_a_wider_parameter_and_an_optional_extra_are_accepted():
    assert conforms(WideJudge, StepJudge) and mismatches(WideJudge, StepJudge) == []


def test_unannotated_is_any():
    assert conforms(UntypedSegmenter, Segmenter)


@pytest.mark.parametrize(
    ("cls", "protocol", "expected"),
    [
        (
            NarrowJudge,
            StepJudge,
            "NarrowJudge.score: parameter items is list[StepItem], which does not take Sequence[StepItem], "
            "what nsa passes",
        ),
        (
            RenamedSegmenter,
            Segmenter,
            "RenamedSegmenter.split(txt: str) -> list[tuple[int, int]] should be split(text: str) -> "
            "list[tuple[int, int]]: the parameter names differ",
        ),
        (NeedySegmenter, Segmenter, "NeedySegmenter.split: parameter language has no default, and nsa never passes it"),
        (NarrowJudge, Consensus, "it has no method combine()"),
    ],
)
def test_a_mismatch_names_the_method_and_the_types(cls, protocol, expected):
    assert mismatches(cls, protocol) == [expected]
    assert not conforms(cls, protocol)
