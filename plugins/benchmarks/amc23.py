"""AMC23: the 40 problems of the 2023 American Mathematics Competitions (AMC 12) used by reasoning papers.

Hub layout (math-ai/amc23, split test): ``id``, ``question``, ``answer``.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from nsa.contracts import Verifier
from nsa.stages.problems import MATH_TEMPLATE, load_fields


@dataclass
class AMC23:
    """AMC23 from ``source`` (a hub id, or a local .jsonl/.json/.parquet file of the same layout).

    Answers are checked by MathVerifier (math-verify in worker processes, ``timeout_s`` each).
    ``limit`` keeps the first N problems; ``name`` prefixes the metrics (``eval/<name>/...``).
    """

    source: str = "math-ai/amc23"
    split: str = "test"
    limit: int | None = None
    name: str = "amc23"
    prompt_template: str = MATH_TEMPLATE
    timeout_s: float = 10.0
    workers: int = 2

    def load(self) -> Dataset:
        fields = {"question": "question", "answer": "answer"}
        hint = "AMC23 reads fields question, answer and id"
        return load_fields(self.source, self.split, fields, hint, limit=self.limit, id_field="id")

    def verifier(self) -> Verifier:
        from nsa.plugins.verifiers.math_verify import MathVerifier

        return MathVerifier(timeout_s=self.timeout_s, workers=self.workers)
