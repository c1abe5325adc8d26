"""MATH500: the 500 MATH test problems of "Let's Verify Step by Step" (Lightman et al., 2023).

Hub layout (HuggingFaceH4/MATH-500, split test): ``problem``, ``answer`` (LaTeX), ``unique_id``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nsa.plugins.benchmarks.problem_file import ProblemFile


@dataclass
class MATH500(ProblemFile):
    """MATH500 from its hub id, or from a local .jsonl/.json/.parquet file of the same layout; see ProblemFile."""

    source: str = "HuggingFaceH4/MATH-500"
    name: str = "math500"
    question_field: str = "problem"
    answer_field: str = "answer"
    id_field: str = "unique_id"
    split: str = "test"
