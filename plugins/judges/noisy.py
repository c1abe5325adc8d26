"""A judge of known quality: another judge's verdicts, flipped at set error rates.

It stands in for a process reward model or an LLM judge when their quality must be known
exactly, as in the toy experiment (``benchmarks/toy_nsa``), where an exact step checker is
the truth and two noisy copies of it play the PRM and the LLM judge, so that consensus
rules can be compared against each single judge.

A step the wrapped judge calls correct is called wrong with probability
``false_negative``; a step it calls wrong is called correct with probability
``false_positive``; an unjudged step (``None``) stays unjudged. Each flip is decided by a
hash of ``seed``, the question, the response and the step's index, not by a random stream,
so the verdicts do not depend on batch order or sharding, a resumed run reproduces them,
and two NoisyJudges with different seeds err independently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from nsa.contracts import StepItem, StepJudge, devices_per_engine, release


def uniform(seed: int, item: StepItem, step: int) -> float:
    """A number in [0, 1) fixed by the seed, the question, the response and the step index (so
    the same answer to the same question, sampled twice, gets the same flips)."""
    key = "\0".join((str(seed), item.question, item.response, str(step)))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


class NoisyJudge:
    """Scores 1.0 / 0.0: ``judge``'s verdict, wrong at the rates ``false_positive`` and ``false_negative``.

    ``judge``'s own ``threshold`` turns its scores into the verdicts that are flipped; this
    judge's ``threshold`` applies to its 0/1 scores, so any value in (0, 1] reads them as they are.
    """

    def __init__(
        self,
        judge: StepJudge,
        false_positive: float = 0.0,
        false_negative: float = 0.0,
        seed: int = 0,
        threshold: float = 0.5,
    ) -> None:
        if not isinstance(judge, StepJudge):
            raise ValueError(
                f"NoisyJudge judge must be a step judge (score() and threshold), got {type(judge).__name__}"
            )
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"NoisyJudge threshold must lie in (0, 1] (its scores are 0 or 1), got {threshold}")
        for name, rate in (("false_positive", false_positive), ("false_negative", false_negative)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"NoisyJudge {name} must be a probability in [0, 1], got {rate}")
        self.judge = judge
        self.false_positive = false_positive
        self.false_negative = false_negative
        self.seed = seed
        self.threshold = threshold

    def score(self, items: Sequence[StepItem]) -> list[list[float | None]]:
        truth = self.judge.score(items)
        return [[self._verdict(score, item, k) for k, score in enumerate(scores)] for item, scores in zip(items, truth)]

    def _verdict(self, score: float | None, item: StepItem, step: int) -> float | None:
        if score is None:
            return None
        correct = score >= self.judge.threshold
        flip = uniform(self.seed, item, step) < (self.false_negative if correct else self.false_positive)
        return float(correct != flip)

    @property
    def devices_per_engine(self) -> int:
        return devices_per_engine(self.judge)  # the wrapped judge's placement

    def close(self) -> None:
        release(self.judge)  # the wrapped judge may hold a model
