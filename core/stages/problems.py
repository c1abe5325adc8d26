"""Stage 0a: load problems (or a benchmark) from jsonl, json, parquet or a dataset id, through ``datasets``."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from datasets import Dataset

from nsa.errors import NSAError
from nsa.stages.cache import StageOutput

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}

# The user message of math problems (DeepSeek-R1's evaluation prompt); ``{question}`` is replaced.
MATH_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def load_problems(source: str, question_field: str, answer_field: str, split: str, limit: int | None) -> StageOutput:
    """Columns ``id``, ``question``, ``answer`` (all strings), fingerprinted by content."""
    fields = {"question": question_field, "answer": answer_field}
    hint = "set data.question_field / data.answer_field"
    dataset = load_fields(source, split, fields, hint, limit=limit)
    return problems_output("problems", dataset, source)


def problems_output(name: str, dataset: Dataset, source: str) -> StageOutput:
    """A stage output for a problem table, fingerprinted by its content."""
    ids = dataset["id"]
    if len(set(ids)) != len(ids):
        twice = next(i for i, n in Counter(ids).items() if n > 1)
        raise NSAError(f"{source}: id '{twice}' names two problems; ids must be unique (answers are grouped by id)")
    digest = hashlib.sha256()
    for row in dataset.select_columns(["id", "question", "answer"]):  # one row at a time: references can be large
        digest.update(json.dumps([row["id"], row["question"], row["answer"]]).encode())
    return StageOutput(name, dataset, digest.hexdigest()[:16], Path(source), {"problems": float(len(dataset))})


def load_fields(
    source: str,
    split: str,
    fields: dict[str, str],
    hint: str,
    subset: str | None = None,
    limit: int | None = None,
    id_field: str = "id",
) -> Dataset:
    """``id``, ``question`` and ``answer`` strings from ``source``'s own field names.

    ``fields`` maps ``question`` and ``answer`` to the source's field names; a missing one is
    an error naming the field, the source and ``hint`` (what to set). Rows without an
    ``id_field`` are numbered.
    """
    raw = load_raw(source, split, subset)
    for field in fields.values():
        if field not in raw.column_names:
            raise NSAError(f"{source}: no field '{field}' (fields: {', '.join(raw.column_names)}); {hint}")
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))
    ids = raw[id_field] if id_field in raw.column_names else [f"q{i:06d}" for i in range(len(raw))]
    table = {
        "id": [str(i) for i in ids],
        "question": [str(q) for q in raw[fields["question"]]],
        "answer": [_answer_text(a, source, n) for n, a in enumerate(raw[fields["answer"]])],
    }
    return Dataset.from_dict(table)


def load_raw(source: str, split: str, subset: str | None = None) -> Dataset:
    import datasets

    builder = FILE_BUILDERS.get(Path(source).suffix)
    if builder and not Path(source).is_file():
        raise NSAError(f"problem file not found: {source}")
    if builder == "json":
        check_json_file(Path(source))
    try:
        if builder:
            return datasets.load_dataset(builder, data_files=source, split="train")
        return datasets.load_dataset(source, subset, split=split)
    except Exception as err:  # datasets raises many types; the user needs the first line
        raise NSAError(f"could not load problems from '{source}': {str(err).splitlines()[0]}") from None


def check_json_file(path: Path) -> None:
    """A .json or .jsonl problem file is UTF-8 JSON, not empty: else one line saying where it is not."""
    data = path.read_bytes()
    if not data.strip():
        raise NSAError(f"problem file {path} is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NSAError(
            f"problem file {path} is not UTF-8 (byte {data[err.start]:#04x} at offset {err.start}); save it as UTF-8"
        ) from None
    documents = enumerate(text.splitlines(), 1) if path.suffix == ".jsonl" else [(1, text)]
    for number, document in documents:
        try:
            if document.strip():
                json.loads(document)
        except ValueError as err:
            lines = path.suffix == ".jsonl"
            where, fix = (number, "one JSON object per line") if lines else (err.lineno, "a JSON list of objects")
            raise NSAError(f"problem file {path} line {where} is not JSON ({err.msg}); write {fix}") from None


def _answer_text(value: object, source: str, row: int) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise NSAError(f"{source}: row {row} has an empty answer; every problem needs a reference answer")
    return text
