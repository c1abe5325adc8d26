"""GSM8K: 1319 grade-school word problems (Cobbe et al., 2021, "Training Verifiers to Solve Math Word Problems").

Hub layout (openai/gsm8k, subset main, split test): ``question``, and ``answer``, a worked
solution that ends with ``#### <number>``; the number after ``####`` (commas removed) is the
reference. There is no id field: problems are numbered.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from nsa.errors import NSAError
from nsa.plugins.benchmarks.problem_file import ProblemFile


@dataclass
class GSM8K(ProblemFile):
    """GSM8K from its hub id, or from a local .jsonl/.json/.parquet file of the same layout; see ProblemFile."""

    source: str = "openai/gsm8k"
    name: str = "gsm8k"
    subset: str | None = "main"
    split: str = "test"

    def load(self) -> Dataset:
        rows = super().load()
        answers = []
        for row, solution in enumerate(rows["answer"]):
            if "####" not in solution:
                raise NSAError(
                    f"{self.source}: answer of row {row} has no '#### <number>'; "
                    "for plain answers use the ProblemFile benchmark"
                )
            answers.append(final_number(solution))
        return rows.remove_columns("answer").add_column("answer", answers)


def final_number(solution: str) -> str:
    """``"... #### 1,234"`` -> ``"1234"``: GSM8K's reference is the number after ``####``."""
    return solution.rpartition("####")[2].strip().replace(",", "")
