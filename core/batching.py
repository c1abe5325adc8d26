"""Optimizer steps of a fixed number of responses, split into micro-batches by token budget.

Each epoch the responses are shuffled (seeded), cut into steps of ``responses_per_step``,
and each step is sorted by length and packed greedily into micro-batches whose size stays
within ``tokens_per_micro_batch``: padded size (rows x longest row), or, ``packed``, the rows'
real tokens (the forward then runs them as one sequence without padding). Every micro-batch knows how
many responses its step holds, so a loss can divide by the step's count and gradients do
not depend on how the step is split.

For a pairwise loss (``pairs``: DPO) the unit of planning is a pair, a correct and an
incorrect answer to the same question, drawn anew each epoch (each answer in at most one
pair; the rest sit the epoch out). A pair is never split across micro-batches, and each
row's ``Slot.partner`` names the other row.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from nsa.contracts import PolicyBatch
from nsa.errors import NSAError


@dataclass(frozen=True)
class Slot:
    """One response's place in the plan: its row and the facts of its optimizer step."""

    row: int
    step_responses: int
    step_positives: int
    last_in_step: bool
    partner: int = -1  # the row of its pair (pairwise losses), -1 when it has none
    null: bool = False  # padding for a process short of work: no token of it is trained


def plan_epoch(
    lengths: Sequence[int],
    positive: Sequence[bool],
    responses_per_step: int,
    tokens_per_micro_batch: int,
    seed: int,
    groups: Sequence[str] | None = None,
    world_size: int = 1,
    rank: int = 0,
    packed: bool = False,
) -> list[list[Slot]]:
    """Process ``rank``'s micro-batches of one epoch; with ``groups`` (question ids), of
    (correct, incorrect) pairs. Every process plans the whole epoch alike (same seed) and
    takes every ``world_size``-th micro-batch of each step."""
    rng = random.Random(seed)
    if groups is None:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        units: list[tuple[int, ...]] = [(i,) for i in order]
    else:
        units = draw_pairs(groups, positive, rng)
        rng.shuffle(units)
    per_step = max(1, responses_per_step // (1 if groups is None else 2))
    micro_batches: list[list[Slot]] = []
    for start in range(0, len(units), per_step):
        step = sorted(units[start : start + per_step], key=lambda u: -max(lengths[i] for i in u))
        packs = pack_greedy(step, lengths, tokens_per_micro_batch, packed)
        micro_batches += _step_share(step, packs, positive, world_size, rank)
    return micro_batches


def _step_share(
    step: list[tuple[int, ...]],
    packed: list[list[int]],
    positive: Sequence[bool],
    world_size: int,
    rank: int,
) -> list[list[Slot]]:
    """One step's micro-batches for process ``rank``: every process gets as many (DDP's and
    FSDP's collectives must pair up), a process short of work a null micro-batch, one row
    with no trained token (its loss and gradient are exactly 0)."""
    rows = [i for unit in step for i in unit]
    n_pos = sum(positive[i] for i in rows)
    partner = {u[k]: u[1 - k] for u in step if len(u) == 2 for k in (0, 1)}
    count = -(-len(packed) // world_size)  # micro-batches per process
    mine = packed[rank::world_size]
    mine += [[]] * (count - len(mine))
    share = []
    for g, group in enumerate(mine):
        last = g == count - 1
        if not group:  # the step's shortest row, masked out by collate
            share.append([Slot(rows[-1], len(rows), n_pos, last, null=True)])
        else:
            share.append([Slot(i, len(rows), n_pos, last, partner.get(i, -1)) for i in group])
    return share


def draw_pairs(groups: Sequence[str], positive: Sequence[bool], rng: random.Random) -> list[tuple[int, int]]:
    """(correct, incorrect) rows of the same question, each row in at most one pair."""
    by_group: dict[str, tuple[list[int], list[int]]] = {}
    for i, group in enumerate(groups):
        by_group.setdefault(group, ([], []))[0 if positive[i] else 1].append(i)
    pairs: list[tuple[int, int]] = []
    for group in sorted(by_group):  # a fixed order, so the seed alone decides the draw
        correct, wrong = by_group[group]
        rng.shuffle(correct)
        rng.shuffle(wrong)
        pairs += zip(correct, wrong)
    return pairs


def pack_greedy(
    units: Sequence[tuple[int, ...]], lengths: Sequence[int], budget: int, packed: bool = False
) -> list[list[int]]:
    """Greedy packing of units sorted longest first. Size: padded, rows x the first unit's longest
    row; ``packed``, the sum of the rows' lengths."""
    groups: list[list[int]] = []
    width = used = 0
    for unit in units:
        size = sum(lengths[i] for i in unit)
        rows = len(groups[-1]) + len(unit) if groups else 0
        if groups and (used + size if packed else rows * width) <= budget:
            groups[-1].extend(unit)
            used += size
        else:
            width, used = max(lengths[i] for i in unit), size
            groups.append(list(unit))
    return groups


def over_budget(lengths: Sequence[int], budget: int, pairs: bool = False) -> list[int]:
    """The rows no micro-batch can hold within ``budget`` padded tokens: a unit (a row, or a
    pair padded to its longer row) wider than the budget; ``pack_greedy`` gives each one a micro-batch
    of its own, over the budget, so training goes on, at that micro-batch's memory."""
    rows_per_unit = 2 if pairs else 1
    return [i for i, n in enumerate(lengths) if n * rows_per_unit > budget]


class StepBatchSampler:
    """Yields process ``rank``'s micro-batches of Slots of one epoch's seeded plan (``groups``: pairs).

    The epoch is fixed when the sampler is made, one sampler per epoch. It has no
    ``sampler.set_epoch`` on purpose: resumed from a checkpoint saved at an epoch's end with
    ``max_steps`` set, Lightning 2.6 passes every later epoch's number plus one to it.

    Its state is how far into the plan it got, so a run resumed from a mid-epoch checkpoint
    trains the rest of the epoch rather than its start again.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        positive: Sequence[bool],
        responses_per_step: int,
        tokens: int,
        seed: int,
        groups: Sequence[str] | None = None,
        world_size: int = 1,
        rank: int = 0,
        epoch: int = 0,
        packed: bool = False,
    ) -> None:
        self.lengths, self.positive = list(lengths), list(positive)
        self.responses_per_step, self.tokens, self.seed = responses_per_step, tokens, seed
        self.groups = None if groups is None else list(groups)
        self.world_size, self.rank, self.epoch, self.packed = world_size, rank, epoch, packed
        self.served = 0  # micro-batches of this epoch's plan handed out so far
        self._resume_at = 0

    def _plan(self) -> list[list[Slot]]:
        seed = self.seed + self.epoch
        return plan_epoch(
            self.lengths,
            self.positive,
            self.responses_per_step,
            self.tokens,
            seed,
            self.groups,
            self.world_size,
            self.rank,
            self.packed,
        )

    def __iter__(self) -> Iterator[list[Slot]]:
        plan, start = self._plan(), self._resume_at
        self._resume_at = 0  # only the first pass after a restore starts mid-plan
        return self._serve(plan, start)

    def _serve(self, plan: list[list[Slot]], start: int) -> Iterator[list[Slot]]:
        self.served = start
        for micro_batch in plan[start:]:
            self.served += 1
            yield micro_batch

    def __len__(self) -> int:
        # the whole plan even when resumed: Lightning restores its own count of the epoch's batches
        return len(self._plan())

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["epoch"] == self.epoch:  # else that epoch is over: the new one starts at its beginning
            self._resume_at = state["served"]


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader with ``state_dict``: Lightning keeps a train loader's state in each checkpoint and restores it.

    ``served`` counts what the training loop has taken only because nothing is fetched ahead:
    no worker processes, and Lightning does not prefetch from a loader with a length. Every
    process serves as many micro-batches a step, so rank 0's count, the one saved, is all of theirs.
    """

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


class RolloutRows(torch.utils.data.Dataset):
    """Rows of the final stage, addressed by Slot."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, slot: Slot) -> tuple[dict, Slot]:
        return self.dataset[slot.row], slot


def pad_right(rows: Sequence[Sequence], value) -> torch.Tensor:
    """Rows of ragged length as one (B, T) tensor, ``value`` after each row's end: nsa's one
    padding (training micro-batches, the behaviour forward, the PRM's forward)."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows])  # (B, T)


def _partners(slots: list[Slot]) -> torch.Tensor:
    """(B,) each row's partner as an index into this micro-batch, -1 when it has none."""
    local = {slot.row: k for k, slot in enumerate(slots)}
    if any(slot.partner >= 0 and slot.partner not in local for slot in slots):
        raise NSAError("a DPO pair was split across micro-batches; this is a planning bug, please report it")
    return torch.tensor([local.get(slot.partner, -1) for slot in slots], dtype=torch.long)


# why a per-token column may not match the answer, and what to do: one text for both checks
LACKING = "a rollout file may lack them: add them to it, or let nsa sample (no data.rollouts)"


def _column(rows: list[dict], name: str) -> torch.Tensor:
    """A loss's extra column: one value per response token -> (B, T) in input coordinates, 0 off
    the response; a number per answer -> (B,)."""
    if not isinstance(rows[0][name], list):
        return torch.tensor([r[name] for r in rows], dtype=torch.float32)  # (B,)
    for r in rows:
        if len(r[name]) != len(r["response_ids"]):
            raise NSAError(
                f"column {name} has {len(r[name])} values for an answer of {len(r['response_ids'])} tokens; "
                f"the loss reads it per token ({LACKING})"
            )
    return pad_right([[0.0] * len(r["prompt_ids"]) + list(r[name]) for r in rows], 0.0).float()  # (B, T)


def collate(
    items: list[tuple[dict, Slot]], pad_id: int, packed: bool = False, columns: Sequence[str] = ()
) -> PolicyBatch:
    """Right-padded prompt+response tensors; masks and ref log-probs in input coordinates.
    ``packed``: the micro-batch was planned by real tokens, for a forward without padding.
    ``columns``: the loss's extra columns (``PolicyLoss``), in ``PolicyBatch.columns``."""
    rows, slots = [r for r, _ in items], [s for _, s in items]
    prompts = [[0] * len(r["prompt_ids"]) for r in rows]
    seqs = [r["prompt_ids"] + r["response_ids"] for r in rows]
    keep = [not s.null for s in slots]  # a null slot (padding for a process short of work) trains no token
    response = [p + [k] * len(r["response_ids"]) for p, r, k in zip(prompts, rows, keep)]
    mined = [p + [bool(m) and k for m in r["nsa_mask"]] for p, r, k in zip(prompts, rows, keep)]
    return PolicyBatch(
        input_ids=pad_right(seqs, pad_id),
        attention_mask=pad_right([[1] * len(s) for s in seqs], 0),
        response_mask=pad_right(response, 0).bool(),
        nsa_mask=pad_right(mined, False).bool(),
        reward=torch.tensor([r["reward"] for r in rows], dtype=torch.float32),
        reward_mean=torch.tensor([r["reward_mean"] for r in rows], dtype=torch.float32),
        reward_std=torch.tensor([r["reward_std"] for r in rows], dtype=torch.float32),
        ref_token_logprobs=pad_right(
            [[0.0] * len(p) + list(r["ref_logprobs"]) for p, r in zip(prompts, rows)], 0.0
        ).float(),
        step_responses=float(slots[0].step_responses),
        step_positives=float(slots[0].step_positives),
        last_in_step=slots[-1].last_in_step,
        partner=_partners(slots),
        question_ids=[r["group"] for r in rows],
        packed=packed,
        columns={name: _column(rows, name) for name in columns},
    )
