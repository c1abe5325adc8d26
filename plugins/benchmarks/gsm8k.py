"""GSM8K: 1319 grade-school word problems (Cobbe et al., 2021, "Training Verifiers to Solve Math Word Problems").

Hub layout (openai/gsm8k, subset main, split test): ``question``, and ``answer``, a worked
solution that ends with ``#### <number>``; the number after ``####`` (commas removed) is the
reference. There is no id field: problems are numbered.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from nsa.contracts import Verifier
from nsa.stages.problems import MATH_TEMPLATE, load_fields


@dataclass
class GSM8K:
    """GSM8K from ``source`` (a hub id with ``subset``, or a local .jsonl/.json/.parquet file of the same layout).

    Answers are checked by MathVerifier (math-verify in worker processes, ``timeout_s`` each).
    ``limit`` keeps the first N problems; ``name`` prefixes the metrics (``eval/<name>/...``).
    """

    source: str = "openai/gsm8k"
    subset: str | None = "main"
    split: str = "test"
    limit: int | None = None
    name: str = "gsm8k"
    prompt_template: str = MATH_TEMPLATE
    timeout_s: float = 10.0
    workers: int = 2

    def load(self) -> Dataset:
        fields = {"question": "question", "answer": "answer"}
        hint = "GSM8K reads fields question and answer (a solution ending in '#### <number>')"
        rows = load_fields(self.source, self.split, fields, hint, subset=self.subset, limit=self.limit)
        return rows.map(lambda row: {"answer": final_number(row["answer"])})

    def verifier(self) -> Verifier:
        from nsa.plugins.verifiers.math_verify import MathVerifier

        return MathVerifier(timeout_s=self.timeout_s, workers=self.workers)


def final_number(solution: str) -> str:
    """``"... #### 1,234"`` -> ``"1234"``: GSM8K's reference is the number after ``####``."""
    return solution.rpartition("####")[2].strip().replace(",", "")
