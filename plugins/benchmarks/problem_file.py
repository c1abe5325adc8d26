"""ProblemFile: any math problem set as a benchmark, e.g. a held-out split of the training file.

The named math benchmarks (MATH500, AIME24, ...) are ProblemFiles whose defaults are their
hub id and field names. ``skip`` and ``limit`` select a range of rows, so the problems a
recipe trains on (its first ``data.max_problems``) can be kept out of the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from nsa.contracts import Verifier
from nsa.errors import NSAError
from nsa.stages.problems import MATH_TEMPLATE, load_fields


@dataclass
class ProblemFile:
    """Rows ``skip`` to ``skip + limit`` of ``source``: a .jsonl/.json/.parquet file, or a dataset id
    (with ``subset`` and ``split``). ``question_field``, ``answer_field`` and ``id_field`` name its
    columns (rows without an id are numbered). Answers are checked by MathVerifier (math-verify in
    ``workers`` processes, ``timeout_s`` each). ``name`` prefixes the metrics (``eval/<name>/...``).
    """

    source: str
    name: str = "problems"
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"
    subset: str | None = None
    split: str = "train"
    skip: int = 0
    limit: int | None = None
    prompt_template: str = MATH_TEMPLATE
    timeout_s: float = 10.0
    workers: int = 2

    def load(self) -> Dataset:
        fields = {"question": self.question_field, "answer": self.answer_field}
        hint = (
            f"{type(self).__name__} reads fields question_field={self.question_field}, answer_field={self.answer_field}"
        )
        rows = load_fields(self.source, self.split, fields, hint, subset=self.subset, id_field=self.id_field)
        if self.skip >= len(rows):
            who = f"{type(self).__name__} {self.name}"
            raise NSAError(f"{who}: skip {self.skip} leaves none of the {len(rows)} rows of {self.source}")
        end = len(rows) if self.limit is None else min(len(rows), self.skip + self.limit)
        return rows.select(range(self.skip, end))

    def verifier(self) -> Verifier:
        from nsa.plugins.verifiers.math_verify import MathVerifier

        return MathVerifier(timeout_s=self.timeout_s, workers=self.workers)
