"""ParagraphSegmenter tiles the text exactly; Vote combines judges' verdicts."""

from __future__ import annotations

import itertools

import pytest

from nsa.contracts import Consensus, Segmenter
from nsa.plugins.consensus.vote import Vote
from nsa.plugins.segmenters.paragraph import ParagraphSegmenter
from nsa.stages.steps import check_tiling


def pieces(text: str, **kwargs: int) -> list[str]:
    spans = ParagraphSegmenter(**kwargs).split(text)
    check_tiling(spans, text, "ParagraphSegmenter")
    assert "".join(text[a:b] for a, b in spans) == text
    return [text[a:b] for a, b in spans]


def test_is_a_segmenter() -> None:
    assert isinstance(ParagraphSegmenter(), Segmenter)
    assert isinstance(Vote(), Consensus)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("one line", ["one line"]),
        ("line 1\nline 2", ["line 1\nline 2"]),  # a single newline is no paragraph break
        ("a\n\nb", ["a\n\n", "b"]),
        ("a\n\nb\n\nc", ["a\n\n", "b\n\n", "c"]),
        ("a\n\n\n\nb", ["a\n\n\n\n", "b"]),  # a run of blank lines is one separator
        ("a\n \nb", ["a\n \n", "b"]),  # a blank line holding spaces
        ("a\n\t \n  b", ["a\n\t \n  ", "b"]),  # indentation after the break joins the separator
        ("\n\na", ["\n\n", "a"]),  # leading blank lines: a step of their own
        ("a\n\n", ["a\n\n"]),  # trailing blank lines stay with the last step
        ("a\n\nb\n\n\n", ["a\n\n", "b\n\n\n"]),
        ("\n\n", ["\n\n"]),
        ("12 * 7 = 84\n\ncafé – ok\n\n日本", ["12 * 7 = 84\n\n", "café – ok\n\n", "日本"]),
    ],
)
def test_paragraph_spans_tile(text: str, expected: list[str]) -> None:
    assert pieces(text) == expected


def test_paragraph_min_chars_merges_into_the_next() -> None:
    """ "ab\\n\\n" (4 chars) "cdefgh\\n\\n" (8) "i" (1), min_chars 5: the first cut at 4 is too
    short and merges, the next cut at 12 closes a 12-char step; the last step always remains."""
    text = "ab\n\ncdefgh\n\ni"
    assert pieces(text) == ["ab\n\n", "cdefgh\n\n", "i"]
    assert pieces(text, min_chars=4) == ["ab\n\n", "cdefgh\n\n", "i"]  # 4 >= 4 keeps the cut
    assert pieces(text, min_chars=5) == ["ab\n\ncdefgh\n\n", "i"]
    assert pieces(text, min_chars=13) == [text]


def test_paragraph_spans_are_plain_int_pairs() -> None:
    spans = ParagraphSegmenter().split("a\n\nb")
    assert spans == [(0, 3), (3, 4)]
    assert all(type(x) is int for span in spans for x in span)


T, F, N = True, False, None


def named(verdicts: list) -> dict:
    """verdicts[judge][step] as the label stage passes them: keyed by judge name."""
    return {f"judge{j}": v for j, v in enumerate(verdicts)}


def expected_vote(rule: str, votes: tuple) -> bool:
    yes = sum(v is True for v in votes)
    return {"all": yes == len(votes), "any": yes >= 1, "majority": 2 * yes > len(votes)}[rule]


@pytest.mark.parametrize("rule", ["all", "any", "majority"])
@pytest.mark.parametrize("judges", [1, 2, 3])
def test_vote_truth_tables(rule: str, judges: int) -> None:
    """Every combination of True / False / None across the judges, one step each."""
    steps = list(itertools.product([T, F, N], repeat=judges))
    verdicts = [[step[j] for step in steps] for j in range(judges)]  # verdicts[judge][step]
    got = Vote(rule).combine(named(verdicts))
    assert got == [expected_vote(rule, step) for step in steps]
    assert all(type(v) is bool for v in got)


@pytest.mark.parametrize(
    ("rule", "verdicts", "expected"),
    [
        # two judges (the paper's LLM + PRM): step-wise T/T, T/F, T/None, None/None, F/F
        ("all", [[T, T, T, N, F], [T, F, N, N, F]], [T, F, F, F, F]),
        ("any", [[T, T, T, N, F], [T, F, N, N, F]], [T, T, T, F, F]),
        ("majority", [[T, T, T, N, F], [T, F, N, N, F]], [T, F, F, F, F]),  # 2 judges: needs both
        # three judges: 2 of 3 is a majority, 1 of 3 (with two unjudged) is not
        ("majority", [[T, T, N], [T, N, N], [F, F, T]], [T, F, F]),
        ("all", [[N]], [F]),  # unjudged never counts as correct
        ("any", [[N, N]], [F, F]),
        ("all", [[], []], []),  # a response with no steps
    ],
)
def test_vote_hand_cases(rule: str, verdicts, expected) -> None:
    assert Vote(rule).combine(named(verdicts)) == expected


@pytest.mark.parametrize("rule", ["all", "any", "majority"])
def test_vote_needs_a_judge(rule: str) -> None:
    with pytest.raises(ValueError, match="at least one judge"):
        Vote(rule).combine({})


def test_vote_default_is_the_papers_all() -> None:
    assert Vote().rule == "all"
    assert Vote().combine(named([[T, T], [T, F]])) == [T, F]


def test_vote_over_a_chosen_judge_is_the_single_judge_ablation() -> None:
    """PRM only / LLM only: the other judge's verdicts are there but do not vote."""
    verdicts = {"PRMJudge": [T, F, N], "LLMJudge": [F, T, T]}
    assert Vote("all", judges=["PRMJudge"]).combine(verdicts) == [T, F, F]
    assert Vote("all", judges=["LLMJudge"]).combine(verdicts) == [F, T, T]
    assert Vote("all").combine(verdicts) == [F, F, F]
    with pytest.raises(ValueError, match="judges are"):
        Vote("all", judges=["SaTJudge"]).combine(verdicts)


def test_windows_line_ends_make_paragraphs_too() -> None:
    text = "a\r\n\r\nb\r\n \r\nc"
    assert ParagraphSegmenter().split(text) == [(0, 5), (5, 11), (11, 12)]
