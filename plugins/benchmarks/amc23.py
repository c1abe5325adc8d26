"""AMC23: the 40 problems of the 2023 American Mathematics Competitions (AMC 12) used by reasoning papers.

Hub layout (math-ai/amc23, split test): ``id``, ``question``, ``answer``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nsa.plugins.benchmarks.problem_file import ProblemFile


@dataclass
class AMC23(ProblemFile):
    """AMC23 from its hub id, or from a local .jsonl/.json/.parquet file of the same layout; see ProblemFile."""

    source: str = "math-ai/amc23"
    name: str = "amc23"
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str = "id"
    split: str = "test"
