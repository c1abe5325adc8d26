"""The toy's oracle: an exact checker of each step against the problem.

A step is right when it applies the problem's next operation to the right value, computes
it exactly, and lists the operations still to do (boxing the result when none are left).
Each step is compared with the text it should be, computed from the true values, which
gives the paper's context rules for its LLM judge:

* error propagation: a step built on an earlier slip (its start value wrong) or on a
  miscopied list of operations is wrong, even when its own arithmetic holds;
* error termination: a ``wait, ...`` step that restates the last operation rightly
  corrects it, and the steps after it can be right again.

Checking arithmetic alone is not enough here: a tiny policy also misreads the operation or
the value it starts from, and ``ArithmeticJudge`` calls ``1 +7 = 8`` right where the
problem said ``9 -7``.

It writes the expected steps with ``arithmetic.step``, the generator's own format. The recipe
names it as ``chain_judge.ChainJudge``, so ``benchmarks/toy_nsa`` must be on the import path
(``run.py`` puts it there; by hand: ``PYTHONPATH=benchmarks/toy_nsa nsa fit ...``).
"""

from __future__ import annotations

from collections.abc import Sequence

from arithmetic import LABELS, apply, step

from nsa.contracts import StepItem


def parse_question(question: str) -> tuple[int, list[tuple[str, int]], bool]:
    """``3 +4 -5 *3`` -> (3, [("+", 4), ("-", 5), ("*", 3)], False); the labelled format's
    ``3 A+4 B-5 C*3`` -> the same operations and True."""
    start, *ops = question.split()
    labelled = bool(ops) and ops[0][0] == LABELS[0]
    ops = [op[1:] if labelled else op for op in ops]
    return int(start), [(op[0], int(op[1:])) for op in ops], labelled


def expected(value: int, ops: list[tuple[str, int]], k: int, labelled: bool = False) -> str:
    """The right text of step k (0-based) from ``value``: ``7 -5 = 2 | *3`` or ``2 *3 = \\boxed{6}``
    (labelled: ``B-5: 7 -5 = 2`` or ``C*3: 2 *3 = \\boxed{6}``)."""
    op, arg = ops[k]
    rest, name = " ".join(f"{o}{a}" for o, a in ops[k + 1 :]), LABELS[k] if labelled else ""
    return step(value, op, arg, apply(value, op, arg), rest, name)


class ChainJudge:
    """Scores each step 1.0 (right in context) or 0.0, reading the problem from the question."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def score(self, items: Sequence[StepItem]) -> list[list[float | None]]:
        return [self._score(item) for item in items]

    def _score(self, item: StepItem) -> list[float | None]:
        """Each step against the text it should be, from the true value: a step built on a wrong
        value or a miscopied list never matches (propagation); a right restatement does (termination)."""
        value, ops, labelled = parse_question(item.question)
        before, done, scores = value, 0, []  # the value before the last operation, operations done
        for start, end in item.spans:
            text = item.response[start:end].strip()
            if text.startswith("wait, ") and done:  # a correction restates the last operation
                right = text == "wait, " + expected(before, ops, done - 1, labelled)
            else:
                right = done < len(ops) and text == expected(value, ops, done, labelled)
                if done < len(ops):
                    before, value, done = value, apply(value, *ops[done]), done + 1
            scores.append(1.0 if right else 0.0)
        return scores
