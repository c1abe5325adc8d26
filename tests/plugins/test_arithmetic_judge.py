"""ArithmeticJudge: which arithmetic claims it reads, how it checks them, and what it refuses."""

from __future__ import annotations

import os
import time
from itertools import pairwise

import pytest

from nsa.contracts import StepItem, StepJudge
from nsa.plugins.judges.arithmetic import ArithmeticJudge, check_claim, evaluate, find_claims


def score_one(text: str, **kwargs: float) -> float | None:
    """The judge's score for a single step made of the whole text."""
    [[score]] = ArithmeticJudge(**kwargs).score([StepItem("q", text, [(0, len(text))])])
    return score


@pytest.mark.parametrize(
    "text",
    [
        "12 * 7 = 84",
        "3 x 4 = 12",
        "3x4 = 12",
        "3 × 4 = 12",
        "84 - 15 = 69",
        "12 − 5 = 7",
        "120 / 4 = 30",
        "10 ÷ 2 = 5",
        "2 + 3 + 4 = 9",
        "3 times 4 = 12",
        "2.5 * 4 = 10",
        "0.1 + 0.2 = 0.3",
        "5 - 8 = -3",
        "So 12 * 7 = 84 apples.",
        "**12 * 7 = 84**",
        "2**10 = 1024",
    ],
)
def test_true_claim_scores_one(text: str) -> None:
    assert score_one(text, no_claim_score=0.5) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "12 * 7 = 85",
        "3 x 4 = 13",
        "84 - 15 = 79",
        "120 / 4 = 3",
        "2 + 3 + 4 = 10",
        "2.5 * 4 = 11",
        "5 - 8 = 3",
    ],
)
def test_false_claim_scores_zero(text: str) -> None:
    assert score_one(text) == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12 * 7 = 84 - 15 = 69", 1.0),  # running computation: 12*7 = 84, then 84 - 15 = 69
        ("12 * 7 = 84 - 15 = 70", 0.0),  # last link false
        ("12 * 7 = 85 - 15 = 70", 0.0),  # first link false, second true
        ("2 + 3 = 5 = 6", 0.0),
        ("2 + 3 = 5 = 10 / 2", 1.0),
    ],
)
def test_chained_claims_check_every_link(text: str, expected: float) -> None:
    assert score_one(text) == expected


def test_chain_is_split_into_links() -> None:
    assert find_claims("12 * 7 = 84 - 15 = 69") == [("12 * 7", "84 - 15"), ("84 - 15", "69")]


def test_non_arithmetic_side_drops_only_its_own_links() -> None:
    assert find_claims("x = 3 + 4 = 7") == [("3 + 4", "7")]
    assert score_one("Let n = 3 + 4 = 8") == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$12 \\times 7 = 84$", 1.0),
        ("$12 \\times 7 = 74$", 0.0),
        ("\\(6 \\cdot 7 = 42\\)", 1.0),
        ("$10 \\div 4 = 2.5$", 1.0),
        ("$\\frac{120}{4} = 30$", 1.0),
        ("$\\frac{120}{4} = 40$", 0.0),
        ("$\\dfrac{\\frac{1}{2}}{4} = 0.125$", 1.0),
        ("$2^{10} = 1024$", 1.0),
        ("$2^{10} = 1000$", 0.0),
        ("\\[ 84 &= 12 \\times 7 \\]", 1.0),
        ("$12 \\times 7 = \\boxed{84}$.", 1.0),
        ("$\\left(2 + 3\\right) \\times 4 = 20$", 1.0),
    ],
)
def test_latex_forms(text: str, expected: float) -> None:
    assert score_one(text, no_claim_score=0.5) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,200 / 4 = 300", 1.0),
        ("1,200 / 4 = 3,000", 0.0),
        ("$1,200 \\times 3 = 3,600$", 1.0),
        ("1,000,000 - 1 = 999,999", 1.0),
    ],
)
def test_thousands_commas(text: str, expected: float) -> None:
    assert score_one(text, no_claim_score=0.5) == expected


def test_commas_are_removed_before_the_claim_is_read() -> None:
    assert find_claims("$1,200 \\times 3 = 3,600$") == [("1200 * 3", "3600")]


def test_no_claim_gets_no_claim_score() -> None:
    assert score_one("First, find how many apples there are in total.", no_claim_score=0.25) == 0.25
    assert score_one("First, find how many apples there are in total.") == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "x = 5",
        "Let n = number of apples",
        "2x + 3 = 9",
        "y - 3 = 9",
        "f(2) = 4",
        "x_1 = 5",
        "9 = 3 + 2y",
        "half of 20 = 10",
        "12 = 3 times the number",
        "5! = 120",
        "50% = 0.4",
        "a == b",
        "3 <= 5",
        "5 / 0 = 0",
    ],
)
def test_equals_without_arithmetic_is_no_claim(text: str) -> None:
    assert find_claims(text) == []
    assert score_one(text, no_claim_score=0.25) == 0.25


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo hi') = 0",
        "().__class__.__bases__[0].__subclasses__() = 0",
        "open('/etc/passwd').read() = 1",
        "(lambda: 1)() = 1",
    ],
)
def test_injection_is_never_evaluated(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("os.system was called")

    monkeypatch.setattr(os, "system", forbidden)
    assert find_claims(text) == []
    assert score_one(text, no_claim_score=0.25) == 0.25
    lhs = text.rsplit("=", 1)[0]
    assert evaluate(lhs) is None
    with pytest.raises(ValueError, match="not an arithmetic claim"):
        check_claim(lhs, "0")


@pytest.mark.parametrize("text", ["9**9**9 = 1", "$9^{9^{9}} = 1$", "((10**100)**64)**64 = 1", "2 ** 100000 = 1"])
def test_huge_power_is_refused_quickly(text: str) -> None:
    start = time.perf_counter()
    assert score_one(text, no_claim_score=0.25) == 0.25
    assert time.perf_counter() - start < 1.0


def test_evaluate_refuses_huge_powers_and_non_real_results() -> None:
    assert evaluate("9**9**9") is None
    assert evaluate("(-8) ** (1 / 3)") is None
    assert evaluate("2 ** -2") == 0.25
    assert evaluate("-(3 + 4) * 2") == -14.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10 / 3 = 3.33", 1.0),
        ("10 / 3 = 3.3", 1.0),
        ("10 / 3 = 3.333333", 1.0),
        ("3.33 = 10 / 3", 1.0),  # the rounded number may be on either side
        ("2 / 3 = 0.67", 1.0),
        ("10 / 3 = 3.4", 0.0),
        ("10 / 3 = 3.34", 0.0),
        ("2 / 3 = 0.66", 0.0),  # truncated, not rounded
        ("10 / 3 = 3", 0.0),  # a whole number gets no rounding slack
        ("7 / 2 = 3", 0.0),
    ],
)
def test_rounding_to_written_decimals(text: str, expected: float) -> None:
    assert score_one(text) == expected


def test_rel_tol_is_configurable() -> None:
    assert score_one("100001 = 100000") == 0.0
    assert score_one("100001 = 100000", rel_tol=1e-4) == 1.0
    with pytest.raises(ValueError):
        ArithmeticJudge(rel_tol=-1.0)


def test_any_false_claim_in_a_step_fails_it() -> None:
    assert score_one("12 * 7 = 84, and 84 - 15 = 69.") == 1.0
    assert score_one("12 * 7 = 84, and 84 - 15 = 70.") == 0.0
    assert score_one("12 * 7 = 84\nso x = 5\n84 - 15 = 79") == 0.0


def test_shape_follows_items_and_spans() -> None:
    first = "12 * 7 = 84\n84 - 15 = 70\nThe answer is 70."
    cuts = [0, first.index("84 -"), first.index("The"), len(first)]
    second = "We need the total."
    items = [
        StepItem("q1", first, list(pairwise(cuts))),
        StepItem("q2", second, [(0, len(second))]),
        StepItem("q3", "", []),
    ]
    scores = ArithmeticJudge(no_claim_score=0.5).score(items)
    assert scores == [[1.0, 0.0, 0.5], [0.5], []]


def test_steps_are_judged_on_their_own_text() -> None:
    text = "12 * 7 = 84"
    # The span cuts the claim in half: neither part is a checkable claim.
    scores = ArithmeticJudge(no_claim_score=0.5).score([StepItem("q", text, [(0, 6), (6, len(text))])])
    assert scores == [[0.5, 0.5]]


def test_meets_step_judge_contract_with_public_config() -> None:
    judge = ArithmeticJudge(threshold=0.7, no_claim_score=0.0, rel_tol=1e-3)
    assert isinstance(judge, StepJudge)
    assert {k: v for k, v in vars(judge).items() if not k.startswith("_")} == {
        "threshold": 0.7,
        "no_claim_score": 0.0,
        "rel_tol": 1e-3,
    }
    assert judge.score([]) == []
