"""The one rule for a right answer (``nsa.contracts.is_correct``) and its 0.5 edge, at every
place that reads it: a reward of exactly 0.5 is a negative everywhere."""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset

from nsa.batching import plan_epoch
from nsa.contracts import is_correct, is_negative
from nsa.evaluate import correct_per_problem
from nsa.plugins.losses.rft import RFT
from nsa.plugins.segmenters.paragraph import ParagraphSegmenter
from nsa.stages.cache import StageOutput
from nsa.stages.rollouts import filter_groups, summarise_groups
from nsa.stages.steps import segment_shard
from tests.core.test_batching import row


def test_the_edge_is_a_negative_on_floats_and_tensors():
    assert [is_correct(r) for r in (0.0, 0.5, 0.5000001, 1.0)] == [False, False, True, True]
    assert [is_negative(r) for r in (0.0, 0.5, 0.5000001, 1.0)] == [True, True, False, False]
    rewards = torch.tensor([0.0, 0.5, 1.0])
    assert is_correct(rewards).tolist() == [False, False, True]
    assert (is_correct(rewards) ^ is_negative(rewards)).all()  # every answer is exactly one of the two


def test_a_half_reward_answer_is_segmented_counted_and_left_out_of_rft():
    """Group g: rewards 1.0, 0.5, 0.0; the 0.5 answer is a negative at each stage:
    segmented (two paragraphs -> 2 spans), counted among the negatives (2 of 3 kept answers),
    not correct for evaluation (1 right answer) and not trained by RFT (its nll weight 0)."""
    rows = Dataset.from_dict(
        {"group": ["g"] * 3, "reward": [1.0, 0.5, 0.0], "response": ["a\n\nb", "c\n\nd", "e\n\nf"]}
    )
    spans = segment_shard(rows, ParagraphSegmenter())["spans"]
    assert [len(s) for s in spans] == [0, 2, 2]
    stats = summarise_groups(rows, filter_groups(rows))
    assert stats["negatives"] == 2.0 and stats["questions_all_correct"] == 0.0
    assert correct_per_problem(StageOutput("verify", rows, "x", Path("."), {})) == [1]
    positive = [is_correct(r) for r in rows["reward"]]  # the data module's rule for step_positives
    assert plan_epoch([4, 4, 4], positive, 3, 100, seed=0)[0][0].step_positives == 1


def test_groups_are_kept_and_counted_by_one_rule_with_fractional_rewards():
    """Five questions: a (0.5, 0.0) and e (1.0, 0.0) have rewards that differ, so advantages: kept,
    though a holds no right answer; b (1.0, 1.0) is all correct; c (0.0, 0.0) and d (0.5, 0.5) are all
    wrong (equal rewards, negatives). Kept 2 + all correct 1 + all wrong 2 = the 5 questions; the kept
    answers are 4, of which 3 negatives (both of a's, one of e's). Before, d's and a's counts disagreed:
    a was kept and also counted all wrong (no answer above 0.5), so the three added up to 6."""
    rewards = {"a": [0.5, 0.0], "b": [1.0, 1.0], "c": [0.0, 0.0], "d": [0.5, 0.5], "e": [1.0, 0.0]}
    rows = Dataset.from_dict(
        {"group": [g for g, r in rewards.items() for _ in r], "reward": [x for r in rewards.values() for x in r]}
    )
    kept = filter_groups(rows)
    stats = summarise_groups(rows, kept)
    assert sorted(set(kept["group"])) == ["a", "e"]
    assert (stats["questions_kept"], stats["questions_all_correct"], stats["questions_all_wrong"]) == (2, 1, 2)
    assert stats["questions"] == 5 and stats["answers_kept"] == 4 and stats["negatives"] == 3


def test_rft_trains_only_the_answer_above_the_edge():
    """Rows with rewards 1.0 and 0.5, both of log-prob -1 per token: RFT's loss is the correct
    row's nll (1.0) over step_positives (1): 1.0; were 0.5 correct, the weight would double it."""
    from nsa.batching import Slot, collate

    rows = [row([1], [2, 3], [0, 0], [-1.0, -1.0], reward=1.0), row([1], [2, 3], [0, 0], [-1.0, -1.0], reward=0.5)]
    slots = [Slot(0, 2, 1, True), Slot(1, 2, 1, True)]
    batch = collate(list(zip(rows, slots)), pad_id=0)
    logprobs = torch.full(batch.input_ids.shape, -1.0)
    assert RFT()(batch, logprobs).loss.item() == 1.0
