"""plan_epoch and collate: steps of a fixed response count, token-budget micro-batches."""

from __future__ import annotations

import random

import pytest
import torch

from nsa.batching import Slot, StepBatchSampler, collate, plan_epoch

BUDGET = 100
PER_STEP = 5


def data(n: int = 23, seed: int = 1) -> tuple[list[int], list[bool]]:
    """Ragged lengths (1..60) with two rows longer than the budget, and mixed rewards."""
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(n)]
    lengths[3], lengths[17] = 150, BUDGET + 1
    return lengths, [rng.random() < 0.4 for _ in range(n)]


def steps_of(plan: list[list[Slot]]) -> list[list[list[Slot]]]:
    """Group consecutive micro-batches into optimizer steps, closed by last_in_step."""
    steps, current = [], []
    for micro in plan:
        assert micro, "empty micro-batch"
        assert len({s.last_in_step for s in micro}) == 1
        current.append(micro)
        if micro[0].last_in_step:
            steps.append(current)
            current = []
    assert not current, "the plan ends inside a step"
    return steps


def test_every_row_once_per_epoch() -> None:
    lengths, positive = data()
    plan = plan_epoch(lengths, positive, PER_STEP, BUDGET, seed=0)
    rows = [s.row for micro in plan for s in micro]
    assert sorted(rows) == list(range(len(lengths)))


def test_steps_hold_responses_per_step_and_know_their_counts() -> None:
    """23 rows, 5 per step: steps of 5, 5, 5, 5, 3; counts shared by every slot of the step."""
    lengths, positive = data()
    steps = steps_of(plan_epoch(lengths, positive, PER_STEP, BUDGET, seed=0))
    assert [sum(len(m) for m in step) for step in steps] == [5, 5, 5, 5, 3]
    for step in steps:
        slots = [s for micro in step for s in micro]
        assert {s.step_responses for s in slots} == {len(slots)}
        assert {s.step_positives for s in slots} == {sum(positive[s.row] for s in slots)}
        assert [m[0].last_in_step for m in step] == [False] * (len(step) - 1) + [True]


def test_micro_batches_respect_the_token_budget() -> None:
    lengths, positive = data()
    plan = plan_epoch(lengths, positive, PER_STEP, BUDGET, seed=0)
    for micro in plan:
        longest = max(lengths[s.row] for s in micro)
        assert len(micro) * longest <= BUDGET or len(micro) == 1
    alone = [micro for micro in plan if any(lengths[s.row] > BUDGET for s in micro)]
    assert [[s.row for s in m] for m in alone] in ([[3], [17]], [[17], [3]])
    assert len(plan) < len(lengths)  # short rows do share micro-batches


def test_packing_hand_example() -> None:
    """One step of lengths 50, 30, 30, 20, 10, budget 100, sorted longest first:
    [50] + 30 -> 2 x 50 = 100 fits; + 30 -> 3 x 50 = 150 no -> new [30]; + 20 -> 2 x 30 = 60;
    + 10 -> 3 x 30 = 90; so [50, 30], [30, 20, 10] (which 30 goes first is a tie).
    """
    lengths = [10, 30, 50, 20, 30]
    plan = plan_epoch(lengths, [True, False, False, True, False], 5, 100, seed=0)
    assert [[lengths[s.row] for s in m] for m in plan] == [[50, 30], [30, 20, 10]]
    assert [m[0].last_in_step for m in plan] == [False, True]
    assert {(s.step_responses, s.step_positives) for m in plan for s in m} == {(5, 2)}


def test_packed_plan_counts_real_tokens() -> None:
    """The same step packed without padding, budget 100: a micro-batch holds rows while their
    lengths sum to at most 100: 50 + 30 = 80, + 30 = 110 no -> new [30]; + 20 + 10 = 60; so
    [50, 30], [30, 20, 10] again, now 80 and 60 computed tokens instead of 100 and 90.
    With lengths 40, 30, 20, 10: padded [40, 30] (2 x 40), [20, 10]; packed [40, 30, 20, 10] (100).
    """
    lengths = [10, 30, 50, 20, 30]
    plan = plan_epoch(lengths, [True] * 5, 5, 100, seed=0, packed=True)
    assert [[lengths[s.row] for s in m] for m in plan] == [[50, 30], [30, 20, 10]]
    lengths = [40, 30, 20, 10]
    padded = plan_epoch(lengths, [True] * 4, 4, 100, seed=0)
    packed = plan_epoch(lengths, [True] * 4, 4, 100, seed=0, packed=True)
    assert [[lengths[s.row] for s in m] for m in padded] == [[40, 30], [20, 10]]
    assert [[lengths[s.row] for s in m] for m in packed] == [[40, 30, 20, 10]]


def test_seed_fixes_the_plan_and_epochs_differ() -> None:
    lengths, positive = data()
    first = plan_epoch(lengths, positive, PER_STEP, BUDGET, seed=0)
    assert plan_epoch(lengths, positive, PER_STEP, BUDGET, seed=0) == first
    second = plan_epoch(lengths, positive, PER_STEP, BUDGET, seed=1)
    assert [s.row for m in second for s in m] != [s.row for m in first for s in m]


def test_step_batch_sampler_reshuffles_per_epoch() -> None:
    lengths, positive = data()
    sampler = StepBatchSampler(lengths, positive, PER_STEP, BUDGET, seed=7)
    epoch0 = list(sampler)
    assert epoch0 == list(sampler) == plan_epoch(lengths, positive, PER_STEP, BUDGET, seed=7)
    assert len(sampler) == len(epoch0)
    sampler = StepBatchSampler(lengths, positive, PER_STEP, BUDGET, seed=7, epoch=1)
    assert list(sampler) == plan_epoch(lengths, positive, PER_STEP, BUDGET, seed=8) != epoch0


def row(prompt, response, nsa, ref, reward=0.0, mean=0.5, group="g") -> dict:
    return {
        "prompt_ids": prompt,
        "response_ids": response,
        "nsa_mask": nsa,
        "ref_logprobs": ref,
        "reward": reward,
        "reward_mean": mean,
        "reward_std": 0.5,
        "group": group,
    }


@pytest.fixture
def batch():
    items = [
        (row([1, 2], [3, 4], [False, True], [-0.1, -0.2], 1.0, 0.5, "q1"), Slot(4, 7, 3, False)),
        (
            row([5], [6, 7, 8, 9], [True, False, False, True], [-1.0, -2.0, -3.0, -4.0], 0.0, 0.5, "q2"),
            Slot(2, 7, 3, False),
        ),
        (row([10, 11, 12], [13], [False], [-0.5], 0.0, 0.25, "q3"), Slot(0, 7, 3, False)),
    ]
    return collate(items, pad_id=99)


def test_collate_shapes_and_padding(batch) -> None:
    """Rows of 4, 5, 4 tokens right-padded to T = 5 with pad_id 99."""
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 99], [5, 6, 7, 8, 9], [10, 11, 12, 13, 99]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    for name in ("input_ids", "attention_mask", "response_mask", "nsa_mask", "ref_token_logprobs"):
        assert getattr(batch, name).shape == (3, 5), name
    assert batch.input_ids.dtype == torch.long
    assert batch.response_mask.dtype == batch.nsa_mask.dtype == torch.bool
    assert batch.ref_token_logprobs.dtype == torch.float32


def test_collate_masks_in_input_coordinates(batch) -> None:
    """Position t is token input_ids[t]: the response starts right after the prompt."""
    F, T = False, True
    assert batch.response_mask.tolist() == [[F, F, T, T, F], [F, T, T, T, T], [F, F, F, T, F]]
    assert batch.nsa_mask.tolist() == [[F, F, F, T, F], [F, T, F, F, T], [F, F, F, F, F]]
    ref = batch.ref_token_logprobs
    assert torch.allclose(
        ref,
        torch.tensor([[0, 0, -0.1, -0.2, 0], [0, -1.0, -2.0, -3.0, -4.0], [0, 0, 0, -0.5, 0]]),
    )
    assert (ref[~batch.response_mask] == 0).all()  # zero on prompt and padding


def test_collate_rewards_and_step_facts(batch) -> None:
    assert batch.reward.tolist() == [1.0, 0.0, 0.0]
    assert batch.reward_mean.tolist() == [0.5, 0.5, 0.25] and batch.reward_std.tolist() == [0.5] * 3
    assert batch.reward.dtype == batch.reward_mean.dtype == torch.float32
    assert (batch.step_responses, batch.step_positives, batch.last_in_step) == (7.0, 3.0, False)
    assert batch.question_ids == ["q1", "q2", "q3"]
    last = collate([(row([1], [2], [False], [-1.0]), Slot(0, 1, 0, True))], pad_id=0)
    assert last.last_in_step is True


def test_group_std_is_the_sample_std_of_each_group() -> None:
    """GRPO's scale: group a rewards (1, 0) -> sqrt(0.5 / 1) = 0.70710678;
    group b (1, 0, 0): mean 1/3, squares 4/9 + 1/9 + 1/9 = 2/3, / (3 - 1) -> sqrt(1/3) = 0.57735027."""
    from datasets import Dataset

    from nsa.stages.rollouts import with_group_std

    rows = Dataset.from_dict({"group": ["a", "b", "a", "b", "b"], "reward": [1.0, 1.0, 0.0, 0.0, 0.0]})
    std = with_group_std(rows)["reward_std"]
    assert std == pytest.approx([0.70710678, 0.57735027, 0.70710678, 0.57735027, 0.57735027], abs=1e-7)


def test_pairs_are_whole_same_question_and_never_split() -> None:
    """Pairs: a correct and a wrong answer of one question, each answer at most once, a pair
    never across micro-batches; group a (2 right, 3 wrong) gives 2 pairs, b (1, 4) 1, c (0, 2) 0."""
    groups = ["a"] * 5 + ["b"] * 5 + ["c"] * 2
    positive = [True, True, False, False, False, True, False, False, False, False, False, False]
    lengths = [30, 70, 20, 90, 40, 60, 10, 50, 80, 35, 5, 5]
    for seed in range(5):
        plan = plan_epoch(lengths, positive, 4, BUDGET, seed=seed, groups=groups)
        slots = [s for micro in plan for s in micro]
        assert len(slots) == 6 and len({s.row for s in slots}) == 6
        per_group = {g: sum(positive[s.row] for s in slots if groups[s.row] == g) for g in "abc"}
        assert per_group == {"a": 2, "b": 1, "c": 0}
        for micro in plan:
            rows = {s.row for s in micro}
            for s in micro:
                assert s.partner in rows and groups[s.partner] == groups[s.row]
                assert positive[s.partner] != positive[s.row]
        for step in steps_of(plan):
            step_slots = [s for micro in step for s in micro]
            assert all(s.step_responses == len(step_slots) for s in step_slots)  # 2 x pairs
    # a new epoch draws other pairs (seeds 0..4 cannot all pick the same two of a's wrong answers)
    draws = {
        frozenset(s.row for micro in plan_epoch(lengths, positive, 4, BUDGET, seed=k, groups=groups) for s in micro)
        for k in range(5)
    }
    assert len(draws) > 1


def test_collate_maps_partners_to_micro_batch_rows() -> None:
    items = [
        (row([1], [2], [False], [-1.0], 1.0), Slot(7, 2, 1, True, partner=3)),
        (row([1], [4, 5], [False, False], [-1.0, -1.0], 0.0), Slot(3, 2, 1, True, partner=7)),
    ]
    assert collate(items, pad_id=0).partner.tolist() == [1, 0]
    from nsa.errors import NSAError

    with pytest.raises(NSAError, match="split across micro-batches"):
        collate(items[:1], pad_id=0)


def test_rows_with_nonfinite_ref_logprobs_or_too_long_are_dropped() -> None:
    """After a select (an indices mapping over the table) the right rows go: rows 1 (NaN) and
    3 (inf) of the selection, and row 4 (3 + 5 = 8 tokens > 7); rows 0 and 2 stay."""
    from datasets import Dataset

    from nsa.stages.rollouts import drop_unusable

    full = Dataset.from_dict(
        {
            "name": ["x", "a", "b", "c", "d", "e"],
            "prompt_ids": [[1]] + [[1, 2]] * 4 + [[1, 2, 3]],
            "response_ids": [[9]] + [[5, 6]] * 4 + [[5, 6, 7, 8, 9]],
            "ref_logprobs": [
                [0.0],
                [-1.0, -2.0],
                [-1.0, float("nan")],
                [-0.5, -0.5],
                [float("-inf"), -1.0],
                [-1.0] * 5,
            ],
        }
    )
    rows = full.select([1, 2, 3, 4, 5])  # a, b, c, d, e
    kept, stats = drop_unusable(rows, max_length=7)
    assert kept["name"] == ["a", "c"]
    assert stats == {"dropped_nonfinite_ref": 2.0, "dropped_too_long": 1.0}
    assert drop_unusable(rows, max_length=None)[0]["name"] == ["a", "c", "e"]
