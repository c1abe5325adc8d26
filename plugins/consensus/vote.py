"""Combine per-judge step verdicts by vote: all (the paper's consensus), any, or majority.

``judges`` picks which judges vote, by name (their class names, numbered when a class
appears twice: ``nsa prepare`` prints them). ``judges: [PRMJudge]`` is the paper's "PRM
only" ablation; every judge's scores stay cached, so switching re-runs no model.

An unjudged step (``None``) never counts as a vote for "correct": under ``all`` one
unjudged judge makes the step not correct, so missing verdicts are never silently mined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal


class Vote:
    """A step is correct when all / any / a strict majority of the chosen judges say so."""

    def __init__(self, rule: Literal["all", "any", "majority"] = "all", judges: list[str] | None = None) -> None:
        if rule not in ("all", "any", "majority"):
            raise ValueError(f"Vote rule must be 'all', 'any' or 'majority', got {rule!r}")
        self.rule = rule
        self.judges = judges

    def combine(self, verdicts: Mapping[str, Sequence[bool | None]]) -> list[bool]:
        chosen = [verdicts[name] for name in self._names(verdicts)]
        if len({len(v) for v in chosen}) != 1:
            raise ValueError(f"judges gave verdict lists of different lengths: {[len(v) for v in chosen]}")
        needed = {"all": len(chosen), "any": 1, "majority": len(chosen) // 2 + 1}[self.rule]
        return [sum(v is True for v in step) >= needed for step in zip(*chosen)]

    def _names(self, verdicts: Mapping[str, Sequence[bool | None]]) -> list[str]:
        names = list(verdicts) if self.judges is None else self.judges
        unknown = [n for n in names if n not in verdicts]
        if unknown or not names:
            raise ValueError(
                f"Vote needs at least one judge's verdicts; asked for {names}, judges are {list(verdicts)}"
            )
        return names
