"""LiveCodeBench from the hub: its repo ships a loading script, which datasets >= 4 refuses, so
the plugin reads the repo's jsonl files with the json builder.

The hub cannot be reached here: ``datasets.load_dataset`` is replaced by a stand-in that records
what it was asked for and serves the local copy of the format (tests/data/benchmarks).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from nsa.errors import NSAError
from nsa.plugins.benchmarks.livecodebench import LiveCodeBench

COPY = Path(__file__).parents[1] / "data" / "benchmarks" / "livecodebench.jsonl"


def test_a_hub_id_is_read_as_its_jsonl_files(monkeypatch):
    real = datasets.load_dataset
    asked = []

    def hub_stand_in(builder, data_files=None, split=None):
        asked.append((builder, data_files, split))
        return real("json", data_files=str(COPY), split="train")

    monkeypatch.setattr(datasets, "load_dataset", hub_stand_in)
    rows = LiveCodeBench().load()
    assert asked == [("json", "hf://datasets/livecodebench/code_generation_lite/test*.jsonl", "train")]
    assert len(rows) == len(COPY.read_text().splitlines())
    LiveCodeBench(hub_files="test6.jsonl").load()
    assert asked[-1][1] == "hf://datasets/livecodebench/code_generation_lite/test6.jsonl"


def test_an_unreachable_hub_is_one_line_naming_the_files():
    """Offline (HF_HUB_OFFLINE=1 in tests), the real call fails; the error names what was read."""
    with pytest.raises(NSAError, match=r"could not load LiveCodeBench files hf://datasets/livecodebench/.*test\*"):
        LiveCodeBench().load()
