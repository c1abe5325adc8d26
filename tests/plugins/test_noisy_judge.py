"""NoisyJudge: the wrapped judge's verdicts, flipped at the rates asked for, reproducibly."""

from __future__ import annotations

import pytest

from nsa.contracts import StepItem, StepJudge
from nsa.plugins.judges.arithmetic import ArithmeticJudge
from nsa.plugins.judges.noisy import NoisyJudge


def items(n: int) -> list[StepItem]:
    """n responses of 4 steps: steps 0 and 2 hold (1 + k = 1+k), steps 1 and 3 do not (off by one)."""
    out = []
    for i in range(n):
        steps = [f"{i} + 1 = {i + 1}\n\n", f"{i} + 2 = {i + 3}\n\n", f"{i} + 3 = {i + 3}\n\n", f"{i} * 1 = {i + 1}"]
        text, spans, start = "".join(steps), [], 0
        for step in steps:
            spans.append((start, start + len(step)))
            start += len(step)
        out.append(StepItem(f"question {i}", text, spans))
    return out


class Unjudged:
    """A judge that cannot judge the second step of any response."""

    threshold = 0.5

    def score(self, batch):
        return [[1.0, None, 0.0, 1.0][: len(item.spans)] for item in batch]


def test_is_a_step_judge_and_without_noise_equals_the_wrapped_judge():
    oracle = ArithmeticJudge()
    judge = NoisyJudge(oracle)
    assert isinstance(judge, StepJudge)
    batch = items(20)
    assert judge.score(batch) == oracle.score(batch) == [[1.0, 0.0, 1.0, 0.0]] * 20


def test_rates_of_one_flip_every_verdict_of_their_kind():
    """fp=1 makes every wrong step correct; fn=1 makes every correct step wrong."""
    batch = items(5)
    assert NoisyJudge(ArithmeticJudge(), false_positive=1.0).score(batch) == [[1.0] * 4] * 5
    assert NoisyJudge(ArithmeticJudge(), false_negative=1.0).score(batch) == [[0.0] * 4] * 5


def test_error_rates_match_what_was_set():
    """2000 correct and 2000 wrong steps, fp 0.2 and fn 0.1.

    The flips are Bernoulli draws, so the counts are binomial: fp ~ Bin(2000, 0.2) has mean 400
    and sd sqrt(2000 * 0.2 * 0.8) = 17.9; fn ~ Bin(2000, 0.1) has mean 200 and sd 13.4. The
    bounds are 4 sd either side, so a correct hash fails either with probability about 1e-4.
    """
    verdicts = NoisyJudge(ArithmeticJudge(), false_positive=0.2, false_negative=0.1, seed=3).score(items(1000))
    false_negatives = sum(v[0] == 0.0 for v in verdicts) + sum(v[2] == 0.0 for v in verdicts)
    false_positives = sum(v[1] == 1.0 for v in verdicts) + sum(v[3] == 1.0 for v in verdicts)
    assert 400 - 72 <= false_positives <= 400 + 72
    assert 200 - 54 <= false_negatives <= 200 + 54


def test_verdicts_are_reproducible_and_seeds_err_independently():
    """Two judges with fn 0.5 on 4000 correct steps (steps 0 and 2 of 2000 responses): each calls
    about half wrong; if they err independently they agree on "wrong" for about a quarter
    (1000, sd sqrt(4000 * 0.25 * 0.75) = 27.4, bounds 4 sd). The same seed repeats itself exactly,
    also when the items come in another order."""
    batch = items(2000)
    first = NoisyJudge(ArithmeticJudge(), false_negative=0.5, seed=1)
    second = NoisyJudge(ArithmeticJudge(), false_negative=0.5, seed=2)
    a, b = first.score(batch), second.score(batch)
    assert a == NoisyJudge(ArithmeticJudge(), false_negative=0.5, seed=1).score(batch)
    assert first.score(batch[::-1]) == a[::-1]
    both_wrong = sum(x[k] == 0.0 and y[k] == 0.0 for x, y in zip(a, b) for k in (0, 2))
    assert 1000 - 110 <= both_wrong <= 1000 + 110


def test_unjudged_steps_stay_unjudged():
    assert NoisyJudge(Unjudged(), false_positive=1.0, false_negative=1.0).score(items(2)) == [[0.0, None, 1.0, 0.0]] * 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("false_positive", 1.5, "false_positive must be a probability in"),
        ("false_negative", -0.1, "false_negative must be a probability in"),
        ("threshold", 0.0, r"threshold must lie in \(0, 1\]"),
        ("judge", "ArithmeticJudge", "judge must be a step judge .*got str"),
    ],
)
def test_bad_settings_are_refused_by_name(field, value, message):
    settings = {"judge": ArithmeticJudge(), field: value}
    with pytest.raises(ValueError, match=f"NoisyJudge {message}"):
        NoisyJudge(**settings)
