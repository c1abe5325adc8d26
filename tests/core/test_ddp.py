"""Two processes (DDP over gloo, on CPU) train to the same weights as one.

The tiny data has 8 ragged answers (73 to 88 tokens). With 7 responses a step and a token
budget that holds one answer per micro-batch, step 1 has 7 micro-batches: process 0 takes 4,
process 1 takes 3 and a null micro-batch (a row with no trained token), so both run 4
forward/backward passes. Step 2 has the 8th answer alone: process 1 runs only a null one.
Each process's loss is its share of the step's sum, scaled by the process count because DDP
averages gradients; the update must equal the single-process one.

The two-process fit has a cache of its own: both processes share its data stages (3 sample
and verify shards, then the 8 kept answers in 2 shards of 4), which must equal the one-process
run's, row for row.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.recipe import TWO, computed, nsa, stage_rows, tiny_recipe


def fit(recipe: Path, export: Path, cwd: Path, *extra: str) -> str:
    done = nsa(cwd, "fit", "--config", str(recipe), "--trainer.max_steps=2", f"--model.export_dir={export}", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.multiprocess
def test_two_processes_make_the_single_process_update(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path, tiny_model, responses_per_step=7, tokens_per_micro_batch=1)
    fit(recipe, tmp_path / "one", tmp_path)
    stderr = fit(recipe, tmp_path / "two", tmp_path, *TWO, f"--data.cache_dir={tmp_path / 'two-cache'}")
    counts = computed(stderr)
    assert {stage: sum(c) for stage, c in counts.items()} == {
        "sample": 3,
        "verify": 3,
        "groups": 1,
        "segment": 2,
        "behaviour": 2,
        "judge": 2,
        "label": 2,
    }
    assert all(map(sum, zip(*counts.values())))  # both processes computed shards
    for name in ("sample", "verify", "behaviour", "label"):
        assert stage_rows(tmp_path / "two-cache", name) == stage_rows(tmp_path / "cache", name), name
    one, two = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "two" / "model.safetensors")),
    )
    start = load_file(f"{tiny_model}/model.safetensors")
    assert any(not torch.equal(one[k], start[k]) for k in start)
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=1e-5)


def test_process_shares_pad_with_null_micro_batches():
    """Plan facts behind the test above, by hand: 7 micro-batches over 2 processes."""
    from nsa.batching import plan_epoch

    lengths, positive = [80, 81, 82, 83, 84, 85, 86, 87], [True, False] * 4
    plans = [plan_epoch(lengths, positive, 7, 1, seed=0, world_size=2, rank=r) for r in (0, 1)]
    assert [len(p) for p in plans] == [5, 5]  # step 1: 4 each; step 2: 1 each
    rows = [[s.row for micro in p for s in micro if not s.null] for p in plans]
    assert sorted(rows[0] + rows[1]) == list(range(8))  # every answer once, on one process
    nulls = [[micro[0].null for micro in p] for p in plans]
    assert nulls == [[False] * 5, [False, False, False, True, True]]
    assert [[micro[0].last_in_step for micro in p] for p in plans] == [[False, False, False, True, True]] * 2


@pytest.mark.multiprocess
def test_a_nan_loss_on_one_process_stops_every_process(tmp_path, tiny_model):
    """Only process 1's loss is NaN (tests.counting.NaNOnProcessOne), at step 0. Process 1 stops
    naming its questions; process 0's own loss is finite, and it stops too, at the same step,
    because the non-finite flag is all-reduced: without that it would go on to the backward pass
    and wait for process 1's gradients (the timeout catches such a hang)."""
    recipe = tiny_recipe(tmp_path, tiny_model, responses_per_step=4, tokens_per_micro_batch=1)
    loss = "--model.loss=tests.counting.NaNOnProcessOne"
    done = nsa(tmp_path, "fit", "--config", str(recipe), loss, *TWO, timeout=240)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "nsa: error: loss is nan at step 0 (questions " in done.stderr  # process 1
    assert "nsa: error: another process's loss is NaN or inf at step 0;" in done.stderr  # process 0
