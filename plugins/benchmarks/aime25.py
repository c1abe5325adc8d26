"""AIME25: the 30 problems of the 2025 American Invitational Mathematics Examination (I and II).

Hub layout (math-ai/aime25, split test): ``id``, ``problem``, ``answer`` (an integer 0-999).
"""

from __future__ import annotations

from dataclasses import dataclass

from nsa.plugins.benchmarks.problem_file import ProblemFile


@dataclass
class AIME25(ProblemFile):
    """AIME25 from its hub id, or from a local .jsonl/.json/.parquet file of the same layout; see ProblemFile."""

    source: str = "math-ai/aime25"
    name: str = "aime25"
    question_field: str = "problem"
    answer_field: str = "answer"
    id_field: str = "id"
    split: str = "test"
