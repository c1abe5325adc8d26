"""ProblemFile: any problem set in the recipe's own format as a benchmark, e.g. a held-out split.

Fields are named as in ``data.question_field`` / ``data.answer_field``; ``skip`` and ``limit``
select a range of rows, so the problems a recipe trains on (its first ``data.max_problems``)
can be kept out of the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from nsa.contracts import Verifier
from nsa.errors import NSAError
from nsa.stages.problems import MATH_TEMPLATE, load_fields


@dataclass
class ProblemFile:
    """Rows ``skip`` to ``skip + limit`` of ``source`` (a .jsonl/.json/.parquet file or a dataset id).

    Answers are checked by MathVerifier (math-verify in worker processes, ``timeout_s`` each).
    """

    source: str
    name: str = "problems"
    question_field: str = "question"
    answer_field: str = "answer"
    split: str = "train"
    skip: int = 0
    limit: int | None = None
    prompt_template: str = MATH_TEMPLATE
    timeout_s: float = 10.0
    workers: int = 2

    def load(self) -> Dataset:
        fields = {"question": self.question_field, "answer": self.answer_field}
        hint = "set question_field / answer_field of the ProblemFile benchmark"
        rows = load_fields(self.source, self.split, fields, hint)
        if self.skip >= len(rows):
            raise NSAError(
                f"ProblemFile {self.name}: skip {self.skip} leaves none of the {len(rows)} rows of {self.source}"
            )
        end = len(rows) if self.limit is None else min(len(rows), self.skip + self.limit)
        return rows.select(range(self.skip, end))

    def verifier(self) -> Verifier:
        from nsa.plugins.verifiers.math_verify import MathVerifier

        return MathVerifier(timeout_s=self.timeout_s, workers=self.workers)
