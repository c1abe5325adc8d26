"""MATH500: the 500 MATH test problems of "Let's Verify Step by Step" (Lightman et al., 2023).

Hub layout (HuggingFaceH4/MATH-500, split test): ``problem``, ``answer`` (LaTeX), ``unique_id``.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from nsa.contracts import Verifier
from nsa.stages.problems import MATH_TEMPLATE, load_fields


@dataclass
class MATH500:
    """MATH500 from ``source`` (a hub id, or a local .jsonl/.json/.parquet file of the same layout).

    Answers are checked by MathVerifier (math-verify in worker processes, ``timeout_s`` each).
    ``limit`` keeps the first N problems; ``name`` prefixes the metrics (``eval/<name>/...``).
    """

    source: str = "HuggingFaceH4/MATH-500"
    split: str = "test"
    limit: int | None = None
    name: str = "math500"
    prompt_template: str = MATH_TEMPLATE
    timeout_s: float = 10.0
    workers: int = 2

    def load(self) -> Dataset:
        fields = {"question": "problem", "answer": "answer"}
        hint = "MATH500 reads fields problem, answer and unique_id"
        return load_fields(self.source, self.split, fields, hint, limit=self.limit, id_field="unique_id")

    def verifier(self) -> Verifier:
        from nsa.plugins.verifiers.math_verify import MathVerifier

        return MathVerifier(timeout_s=self.timeout_s, workers=self.workers)
