"""Combine per-judge step verdicts by vote: all (the paper's consensus), any, or majority.

An unjudged step (``None``) never counts as a vote for "correct": under ``all`` one
unjudged judge makes the step not correct, so missing verdicts are never silently mined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal


class Vote:
    """A step is correct when all / any / a strict majority of the judges say so."""

    def __init__(self, rule: Literal["all", "any", "majority"] = "all") -> None:
        if rule not in ("all", "any", "majority"):
            raise ValueError(f"Vote rule must be 'all', 'any' or 'majority', got {rule!r}")
        self.rule = rule

    def combine(self, verdicts: Sequence[Sequence[bool | None]]) -> list[bool]:
        if not verdicts:
            raise ValueError("Vote needs at least one judge's verdicts")
        if len({len(v) for v in verdicts}) != 1:
            raise ValueError(f"judges gave verdict lists of different lengths: {[len(v) for v in verdicts]}")
        needed = {"all": len(verdicts), "any": 1, "majority": len(verdicts) // 2 + 1}[self.rule]
        return [sum(v is True for v in step) >= needed for step in zip(*verdicts)]
