"""``nsa generate`` writes the rollouts; ``data.rollouts`` trains from such a file instead of sampling.

The recipe is tests/recipe.py's: three problems, four scripted answers each (tests/scripted.py),
so 12 rollouts, 2 of them correct; the hand count of every later stage is in test_pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nsa.cli import main
from nsa.commands import NSACLI
from tests.recipe import tiny_recipe


def prepare(recipe: Path, *overrides: str):
    cli = NSACLI(["--config", str(recipe), *overrides], run=False)
    cli.datamodule.run_stages()
    return cli.datamodule


def test_generate_writes_the_verified_rollouts(tmp_path, tiny_model, capsys):
    out = tmp_path / "rollouts.jsonl"
    main(["generate", "--config", str(tiny_recipe(tmp_path, tiny_model)), "--output", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and sum(r["reward"] for r in rows) == 2
    assert {r["verify_status"] for r in rows} == {"ok", "no_answer"}
    for row in rows:
        assert row["response_ids"][-1] == 0  # the tiny tokenizer's EOS, kept
        assert row["response_logprobs"] == [0.0] * len(row["response_ids"])  # scripted: not drawn
    assert "12 rollouts written to" in capsys.readouterr().err
    # the same recipe's fit reuses the stages generate ran
    assert len(list((tmp_path / "cache" / "sample").iterdir())) == 1
    prepare(tiny_recipe(tmp_path, tiny_model))
    assert len(list((tmp_path / "cache" / "sample").iterdir())) == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_training_from_a_rollout_file_equals_training_from_sampling(tmp_path, tiny_model, suffix):
    """Same rows, masks and pi_ref log-probs, and no sample stage runs."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sampled = prepare(tiny_recipe(tmp_path / "a", tiny_model)).stages[-1].dataset
    out = tmp_path / f"rollouts{suffix}"
    main(["generate", "--config", str(tiny_recipe(tmp_path / "a", tiny_model)), "--output", str(out)])
    recipe = tiny_recipe(tmp_path / "b", tiny_model, problems="", sampler=None, rollouts=str(out))
    module = prepare(recipe)
    assert not (tmp_path / "b" / "cache" / "sample").exists()
    assert module.stats["answers"] == 12 and module.stats["steps"] == 14
    loaded = module.stages[-1].dataset
    for column in ("response_ids", "nsa_mask", "ref_logprobs", "reward", "reward_mean"):
        assert loaded[column] == sampled[column], column


def test_an_edited_rollout_file_is_a_new_input(tmp_path, tiny_model):
    out = tmp_path / "rollouts.jsonl"
    main(["generate", "--config", str(tiny_recipe(tmp_path, tiny_model)), "--output", str(out)])
    recipe = tiny_recipe(tmp_path, tiny_model, rollouts=str(out))
    first = prepare(recipe).fingerprints["verify"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))  # drop the third problem
    module = prepare(recipe)
    assert module.fingerprints["verify"] != first and module.stats["answers"] == 8


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "none.jsonl", r"data.rollouts: no .jsonl, .json or .parquet file at .*none\.jsonl"),
        (lambda d: d / "rollouts.csv", r"data.rollouts: no .jsonl, .json or .parquet file"),
        (
            lambda d: _write(d / "bad.jsonl", {"group": "q", "question": "?", "answer": "5", "prompt_ids": [1]}),
            r"data.rollouts .*bad\.jsonl: no field 'response_ids'",
        ),
    ],
)
def test_a_bad_rollout_file_fails_in_one_line(tmp_path, tiny_model, capsys, make, message):
    path = make(tmp_path)
    with pytest.raises(SystemExit):
        main(["prepare", "--config", str(tiny_recipe(tmp_path, tiny_model, rollouts=str(path)))])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert __import__("re").search(message, err), err


def test_bad_output_and_missing_inputs_fail_in_one_line(tmp_path, tiny_model, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--config", str(tiny_recipe(tmp_path, tiny_model)), "--output", str(tmp_path / "r.csv")])
    assert "--output" in capsys.readouterr().err  # refused before sampling: nothing cached yet
    assert not (tmp_path / "cache" / "sample").exists()
    with pytest.raises(SystemExit):
        main(["prepare", "--config", str(tiny_recipe(tmp_path, tiny_model, problems=""))])
    assert "set data.problems" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare", "--config", str(tiny_recipe(tmp_path, tiny_model, sampler=None))])
    assert "data.sampler is not set" in capsys.readouterr().err


def _write(path: Path, row: dict) -> Path:
    path.write_text(json.dumps(row) + "\n")
    return path
