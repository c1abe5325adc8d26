"""Optimizer steps of a fixed number of responses, split into micro-batches by token budget.

Each epoch the responses are shuffled (seeded), cut into steps of ``responses_per_step``,
and each step is sorted by length and packed greedily into micro-batches whose padded size
(rows x longest row) stays within ``tokens_per_micro_batch``. Every micro-batch knows how
many responses its step holds, so a loss can divide by the step's count and gradients do
not depend on how the step is split.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from nsa.contracts import PolicyBatch


@dataclass(frozen=True)
class Slot:
    """One response's place in the plan: its row and the facts of its optimizer step."""

    row: int
    step_responses: int
    step_positives: int
    last_in_step: bool


def plan_epoch(
    lengths: Sequence[int],
    positive: Sequence[bool],
    responses_per_step: int,
    tokens_per_micro_batch: int,
    seed: int,
) -> list[list[Slot]]:
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    micro_batches: list[list[Slot]] = []
    for start in range(0, len(order), responses_per_step):
        step = sorted(order[start : start + responses_per_step], key=lambda i: -lengths[i])
        groups = _pack(step, lengths, tokens_per_micro_batch)
        n_pos = sum(positive[i] for i in step)
        for g, rows in enumerate(groups):
            last = g == len(groups) - 1
            micro_batches.append([Slot(i, len(step), n_pos, last) for i in rows])
    return micro_batches


def _pack(rows: list[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Greedy packing of rows sorted longest first: padded size = count x first length."""
    groups: list[list[int]] = []
    for i in rows:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class _Epoch:
    """Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` at each epoch start."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class StepBatchSampler:
    """Yields micro-batches of Slots; a new seeded plan every epoch."""

    def __init__(
        self,
        lengths: Sequence[int],
        positive: Sequence[bool],
        responses_per_step: int,
        tokens: int,
        seed: int,
    ) -> None:
        self.lengths, self.positive = list(lengths), list(positive)
        self.responses_per_step, self.tokens, self.seed = responses_per_step, tokens, seed
        self.sampler = _Epoch()

    def _plan(self) -> list[list[Slot]]:
        seed = self.seed + self.sampler.epoch
        return plan_epoch(self.lengths, self.positive, self.responses_per_step, self.tokens, seed)

    def __iter__(self) -> Iterator[list[Slot]]:
        return iter(self._plan())

    def __len__(self) -> int:
        return len(self._plan())


class RolloutRows(torch.utils.data.Dataset):
    """Rows of the final stage, addressed by Slot."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, slot: Slot) -> tuple[dict, Slot]:
        return self.dataset[slot.row], slot


def _pad(rows: list[list], value) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows])  # (B, T)


def collate(items: list[tuple[dict, Slot]], pad_id: int) -> PolicyBatch:
    """Right-padded prompt+response tensors; masks and ref log-probs in input coordinates."""
    rows, slots = [r for r, _ in items], [s for _, s in items]
    prompts = [[0] * len(r["prompt_ids"]) for r in rows]
    seqs = [r["prompt_ids"] + r["response_ids"] for r in rows]
    return PolicyBatch(
        input_ids=_pad(seqs, pad_id),
        attention_mask=_pad([[1] * len(s) for s in seqs], 0),
        response_mask=_pad([p + [1] * len(r["response_ids"]) for p, r in zip(prompts, rows)], 0).bool(),
        nsa_mask=_pad([p + list(r["nsa_mask"]) for p, r in zip(prompts, rows)], False).bool(),
        reward=torch.tensor([r["reward"] for r in rows], dtype=torch.float32),
        reward_mean=torch.tensor([r["reward_mean"] for r in rows], dtype=torch.float32),
        reward_std=torch.tensor([r["reward_std"] for r in rows], dtype=torch.float32),
        ref_token_logprobs=_pad([[0.0] * len(p) + list(r["ref_logprobs"]) for p, r in zip(prompts, rows)], 0.0).float(),
        step_responses=float(slots[0].step_responses),
        step_positives=float(slots[0].step_positives),
        last_in_step=slots[-1].last_in_step,
        question_ids=[r["group"] for r in rows],
    )
