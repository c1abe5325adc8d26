"""Problems load from jsonl, parquet, or a dataset folder/id through `datasets`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset

from nsa.errors import NSAError
from nsa.stages.problems import load_problems

THREE = Path(__file__).parents[1] / "data" / "three_problems.jsonl"


def test_jsonl_parquet_and_folder_give_the_same_problems(tmp_path):
    rows = [json.loads(line) for line in THREE.read_text().splitlines()]
    parquet = tmp_path / "p.parquet"
    Dataset.from_list(rows).to_parquet(str(parquet))
    folder = tmp_path / "as_dataset_id"
    folder.mkdir()
    shutil.copy(THREE, folder / "train.jsonl")
    loaded = [load_problems(str(src), "question", "answer", "train", None) for src in (THREE, parquet, folder)]
    assert all(out.dataset.to_list() == loaded[0].dataset.to_list() for out in loaded)
    assert loaded[0].dataset["answer"] == ["5", "6", "100"]
    assert len({out.fingerprint for out in loaded}) == 1  # keyed by content, not by file


def test_ids_are_made_when_missing_and_limit_applies(tmp_path):
    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps({"q": f"{i} + 1?", "a": i + 1}) + "\n" for i in range(5)))
    out = load_problems(str(source), "q", "a", "train", 3)
    assert out.dataset["id"] == ["q000000", "q000001", "q000002"] and out.dataset["answer"] == ["1", "2", "3"]


def test_missing_file_and_unknown_dataset_are_one_line_errors(tmp_path):
    with pytest.raises(NSAError, match="problem file not found"):
        load_problems(str(tmp_path / "none.jsonl"), "question", "answer", "train", None)
    with pytest.raises(NSAError, match="could not load problems from"):
        load_problems(str(tmp_path / "no_such_folder"), "question", "answer", "train", None)


def test_an_id_used_twice_is_a_one_line_error(tmp_path):
    """Answers are grouped by problem id: two problems with one id would merge their groups."""
    source = tmp_path / "q.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "question": f"{n} + 1?", "answer": n}) + "\n" for n, i in enumerate("aba"))
    )
    with pytest.raises(NSAError, match=r"q\.jsonl: id 'a' names two problems; ids must be unique"):
        load_problems(str(source), "question", "answer", "train", None)
