"""`nsa judge-eval` on the shipped ProcessBench-style file, with the arithmetic judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nsa.cli import main
from nsa.judge_eval import as_step_item, first_wrong, run

FILE = str(Path(__file__).parents[2] / "data" / "process_steps.jsonl")


def test_arithmetic_judge_metrics_match_the_hand_count(capsys):
    """data/process_steps.jsonl: 8 correct solutions, 10 with a first wrong step.

    The arithmetic judge passes all 8 correct ones (no false claim): 8/8 = 100%.
    Of the 10 erroneous, 6 go wrong with a false calculation at the labelled step
    (ps-008..013: "13 * 6 = 68", "36 - 7 = 28", ...) and are found; 4 go wrong in reasoning
    ("A week has 5 days.") that no arithmetic check sees, so the judge predicts -1: 6/10 = 60%.
    F1 = 2 * 0.6 * 1.0 / (0.6 + 1.0) = 0.75.
    """
    result = run(["--file", FILE, "--judge", "nsa.plugins.judges.arithmetic.ArithmeticJudge"])
    expected = {"items": 18.0, "acc_erroneous": 0.6, "acc_correct": 1.0, "f1": pytest.approx(0.75), "unjudged_items": 0}
    assert result == expected
    assert "F1 75.0%" in capsys.readouterr().out


def test_cli_takes_the_short_name_and_checks_the_file(tmp_path, capsys):
    main(["judge-eval", "--file", FILE, "--judge", "ArithmeticJudge"])
    assert "accuracy on erroneous 60.0%" in capsys.readouterr().out
    broken = tmp_path / "b.jsonl"
    broken.write_text(json.dumps({"problem": "p", "steps": ["a"]}) + "\n")
    with pytest.raises(SystemExit):
        main(["judge-eval", "--file", str(broken), "--judge", "ArithmeticJudge"])
    assert "no field 'label'" in capsys.readouterr().err


def test_steps_tile_the_joined_text_and_unjudged_is_not_wrong():
    item = as_step_item({"problem": "p", "steps": ["a = 1", "b", "c"]})
    assert "".join(item.response[s:e] for s, e in item.spans) == item.response == "a = 1\n\nb\n\nc"
    assert first_wrong([1.0, None, 0.2], 0.5) == 2 and first_wrong([None, 1.0], 0.5) == -1
    assert first_wrong([None, None], 0.5) is None  # a failed reply is a miss, never "all correct"
