"""Stage 0a: load problems from jsonl, json, parquet or a dataset id, through ``datasets``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from datasets import Dataset

from nsa.errors import NSAError
from nsa.stages.cache import StageOutput

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_problems(source: str, question_field: str, answer_field: str, split: str, limit: int | None) -> StageOutput:
    """Columns ``id``, ``question``, ``answer`` (all strings), fingerprinted by content."""
    raw = _load_raw(source, split)
    for field in (question_field, answer_field):
        if field not in raw.column_names:
            raise NSAError(
                f"{source}: no field '{field}' (fields: {', '.join(raw.column_names)}); "
                f"set data.question_field / data.answer_field"
            )
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))
    ids = raw["id"] if "id" in raw.column_names else [f"q{i:06d}" for i in range(len(raw))]
    table = {
        "id": [str(i) for i in ids],
        "question": [str(q) for q in raw[question_field]],
        "answer": [_answer_text(a, source, n) for n, a in enumerate(raw[answer_field])],
    }
    dataset = Dataset.from_dict(table)
    fp = hashlib.sha256(repr(sorted(table.items())).encode()).hexdigest()[:16]
    return StageOutput("problems", dataset, fp, Path(source), {"problems": float(len(dataset))})


def _load_raw(source: str, split: str) -> Dataset:
    import datasets

    builder = FILE_BUILDERS.get(Path(source).suffix)
    if builder and not Path(source).is_file():
        raise NSAError(f"problem file not found: {source}")
    try:
        if builder:
            return datasets.load_dataset(builder, data_files=source, split="train")
        return datasets.load_dataset(source, split=split)
    except Exception as err:  # datasets raises many types; the user needs the first line
        raise NSAError(f"could not load problems from '{source}': {str(err).splitlines()[0]}") from None


def _answer_text(value: object, source: str, row: int) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise NSAError(f"{source}: row {row} has an empty answer; every problem needs a reference answer")
    return text
