"""AIME24: the 30 problems of the 2024 American Invitational Mathematics Examination (I and II).

Hub layout (HuggingFaceH4/aime_2024, split train): ``id``, ``problem``, ``answer`` (an integer 0-999).
"""

from __future__ import annotations

from dataclasses import dataclass

from nsa.plugins.benchmarks.problem_file import ProblemFile


@dataclass
class AIME24(ProblemFile):
    """AIME24 from its hub id, or from a local .jsonl/.json/.parquet file of the same layout; see ProblemFile."""

    source: str = "HuggingFaceH4/aime_2024"
    name: str = "aime24"
    question_field: str = "problem"
    answer_field: str = "answer"
    id_field: str = "id"
    split: str = "train"
