"""AIME24: the 30 problems of the 2024 American Invitational Mathematics Examination (I and II).

Hub layout (HuggingFaceH4/aime_2024, split train): ``id``, ``problem``, ``answer`` (an integer 0-999).
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from nsa.contracts import Verifier
from nsa.stages.problems import MATH_TEMPLATE, load_fields


@dataclass
class AIME24:
    """AIME24 from ``source`` (a hub id, or a local .jsonl/.json/.parquet file of the same layout).

    Answers are checked by MathVerifier (math-verify in worker processes, ``timeout_s`` each).
    ``limit`` keeps the first N problems; ``name`` prefixes the metrics (``eval/<name>/...``).
    """

    source: str = "HuggingFaceH4/aime_2024"
    split: str = "train"
    limit: int | None = None
    name: str = "aime24"
    prompt_template: str = MATH_TEMPLATE
    timeout_s: float = 10.0
    workers: int = 2

    def load(self) -> Dataset:
        fields = {"question": "problem", "answer": "answer"}
        hint = "AIME24 reads fields problem, answer and id"
        return load_fields(self.source, self.split, fields, hint, limit=self.limit, id_field="id")

    def verifier(self) -> Verifier:
        from nsa.plugins.verifiers.math_verify import MathVerifier

        return MathVerifier(timeout_s=self.timeout_s, workers=self.workers)
