"""Padding and tokens/s of nsa's micro-batch plans (padded, sorted within each step; padding-free) vs two baselines.

Response lengths of long chain-of-thought answers are long-tailed: most answers are short,
a few run to the generation limit. A padded micro-batch is padded to its longest row, so which
rows share a micro-batch decides how much of the compute is spent on padding. Four plans
of the same epoch (same seed, same shuffle, same optimizer steps of the same responses):

  sorted     nsa.batching.plan_epoch: each step sorted longest first, packed greedily while
             rows x longest row <= the token budget (length bucketing within a step)
  greedy     the same budget-bounded greedy packing on the step's rows in shuffled order
  fixed-B    B rows per micro-batch whatever their length, B = budget // max length so the
             worst micro-batch fits the same memory as the others (what most trainers do)
  packed     plan_epoch(..., packed=True), nsa's padding-free plan: the same sorted greedy
             packing while the rows' real tokens (sum of lengths) <= the budget; the forward
             runs them as one sequence with per-row position ids, so the tokens it computes
             are the sum of the lengths (its padding is counted from the plan on that basis)

Lengths are lognormal (median m, sigma s) rounded and clipped to [min, max]. Padding is
counted at full scale (median 1k, max 16k, 64k-token micro-batches, 512-response steps).
Tokens/s (real, not padding, tokens per second of forward + backward) is timed on a copy
with lengths, budget and log-prob chunk divided by 32 and one 512-response step, so a
micro-batch holds as many rows (and output-layer chunks) as at full scale and the padding
matches; a small random Llama on CPU, every plan on the same responses and tokens, warm-up
excluded, median of the repeats, plans interleaved so drift hits all alike. Log-prob paths:

  sorted, greedy, fixed-B   nsa.logprobs.token_logprobs with the full (B, T, V) logits (the
                            padded path before chunking)
  sorted-chunked            the sorted plan through the chunked output layer (--time-chunk rows
                            at a time, recomputed in the backward), still padded: packed vs
                            this row isolates the gain of packing
  packed                    the packed plan, token_logprobs(..., chunk_tokens=--time-chunk,
                            packed=True): NSAModule's path under data.padding_free (by default
                            only with a variable-length attention, flash-attention or flex)

On CPU compute grows about linearly with padded tokens; on a GPU small micro-batches
(fixed-B) also lose occupancy, not measured here. The packed forward here runs under SDPA
(flex attention has no backward on CPU, flash-attention needs a GPU): rows are kept apart by
the dense block-diagonal mask transformers builds from the position ids, so each layer's
attention scores all (sum of lengths)^2 token pairs of a micro-batch rather than the sum of
lengths^2 a variable-length kernel computes; the timed packed row carries that cost.

    python benchmarks/padding.py
    python benchmarks/padding.py --json padding.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

import torch

PLANS = ("sorted", "greedy", "fixed-B", "packed")
# timed rows: name -> (plan, chunked output layer, packed forward)
TIMED = {
    "sorted": ("sorted", False, False),
    "greedy": ("greedy", False, False),
    "fixed-B": ("fixed-B", False, False),
    "sorted-chunked": ("sorted", True, False),
    "packed": ("packed", True, True),
}


def long_tail_lengths(n: int, median: float, sigma: float, min_len: int, max_len: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(max_len, max(min_len, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def shuffled_steps(n: int, per_step: int, seed: int) -> list[list[int]]:
    """The optimizer steps plan_epoch draws for this seed (same RNG calls), in shuffled order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[start : start + per_step] for start in range(0, n, per_step)]


def sorted_plan(lengths: list[int], per_step: int, budget: int, seed: int, packed: bool = False) -> list[list[int]]:
    """nsa's plan; ``packed``: the budget bounds the rows' real tokens, not rows x longest row."""
    from nsa.batching import plan_epoch

    positive = [True] * len(lengths)  # the plan does not depend on rewards without groups
    plan = plan_epoch(lengths, positive, per_step, budget, seed, packed=packed)
    return [[slot.row for slot in mb] for mb in plan]


def greedy_unsorted(step: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """nsa's pack_greedy without the sort: the width is the longest row so far, not the first row's."""
    groups: list[list[int]] = []
    width = 0
    for i in step:
        if groups and (len(groups[-1]) + 1) * max(width, lengths[i]) <= budget:
            groups[-1].append(i)
            width = max(width, lengths[i])
        else:
            groups.append([i])
            width = lengths[i]
    return groups


def all_plans(lengths: list[int], per_step: int, budget: int, rows: int, seed: int) -> dict[str, list[list[int]]]:
    steps = shuffled_steps(len(lengths), per_step, seed)
    plans = {
        "sorted": sorted_plan(lengths, per_step, budget, seed),
        "greedy": [mb for step in steps for mb in greedy_unsorted(step, lengths, budget)],
        "fixed-B": [step[k : k + rows] for step in steps for k in range(0, len(step), rows)],
        "packed": sorted_plan(lengths, per_step, budget, seed, packed=True),
    }
    check_same_steps(plans["sorted"], steps)
    check_same_steps(plans["packed"], steps)
    return plans


def check_same_steps(plan: list[list[int]], steps: list[list[int]]) -> None:
    """The baselines must regroup the very steps nsa trains on, or the comparison is unfair."""
    flat = [i for mb in plan for i in mb]
    cut = [sorted(flat[k : k + len(s)]) for k, s in zip(range(0, len(flat), len(steps[0])), steps)]
    if cut != [sorted(s) for s in steps]:
        raise SystemExit("plan_epoch no longer shuffles as shuffled_steps assumes; update this benchmark")


def padding_stats(plan: list[list[int]], lengths: list[int], packed: bool = False) -> dict:
    """Real and computed tokens: a padded micro-batch computes rows x its longest row, a packed
    one (a single sequence of its rows) the sum of its rows' lengths."""
    real = sum(lengths[i] for mb in plan for i in mb)
    width = (lambda mb: sum(lengths[i] for i in mb)) if packed else (lambda mb: len(mb) * max(lengths[i] for i in mb))
    padded = sum(width(mb) for mb in plan)
    top = max(width(mb) for mb in plan)  # the largest micro-batch in computed tokens: its memory
    return {
        "micro_batches": len(plan),
        "real_tokens": real,
        "padded_tokens": padded,
        "padding": 1 - real / padded,
        "largest_micro_batch": top,
    }


def tiny_lm(vocab: int, max_len: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_len,
    )
    return LlamaForCausalLM(config).float().train()


def tensors(plan: list[list[int]], tokens: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded (input_ids, attention_mask) per micro-batch, built before timing."""
    out = []
    for mb in plan:
        width = max(len(tokens[i]) for i in mb)
        ids = torch.zeros(len(mb), width, dtype=torch.long)  # (B, T)
        mask = torch.zeros(len(mb), width, dtype=torch.long)  # (B, T)
        for r, i in enumerate(mb):
            ids[r, : len(tokens[i])] = tokens[i]
            mask[r, : len(tokens[i])] = 1
        out.append((ids, mask))
    return out


def train_pass(
    model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], chunk: int | None, packed: bool
) -> float:
    """Seconds for nsa's forward and a backward over every micro-batch (no optimizer step:
    it costs the same in every plan). ``chunk`` None: the full logits; ``packed``: no padding."""
    from nsa.logprobs import token_logprobs

    start = time.perf_counter()
    for ids, mask in batches:
        logprobs = token_logprobs(model, ids, mask, chunk, packed)  # (B, T) float32
        (logprobs * mask).sum().backward()  # padding positions carry no gradient
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def timings(model: torch.nn.Module, batches: dict[str, list], chunk: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each TIMED row per repeat, rows interleaved."""
    paths = {name: (plan, chunk if chunked else None, packed) for name, (plan, chunked, packed) in TIMED.items()}
    for plan, chunk_tokens, packed in paths.values():  # warm-up: lazy init and the allocator's first large blocks
        train_pass(model, batches[plan][:2], chunk_tokens, packed)
    seconds: dict[str, list[float]] = {name: [] for name in TIMED}
    for _ in range(repeats):
        for name, (plan, chunk_tokens, packed) in paths.items():
            seconds[name].append(train_pass(model, batches[plan], chunk_tokens, packed))
    return seconds


def planned(args: argparse.Namespace, n: int, median: float, top: int, per_step: int, budget: int) -> tuple:
    """Lengths, the four plans and their padding figures for one setting."""
    lengths = long_tail_lengths(n, median, args.sigma, args.min_len, top, args.seed)
    rows = args.fixed_rows or max(1, budget // top)
    plans = all_plans(lengths, per_step, budget, rows, args.seed)
    table = {name: padding_stats(plan, lengths, packed=name == "packed") for name, plan in plans.items()}
    table["fixed-B"]["rows"] = rows
    return lengths, plans, table


def padding_table(args: argparse.Namespace) -> dict[str, dict]:
    return planned(args, args.responses, args.median, args.max_len, args.per_step, args.budget)[2]


def timed_table(args: argparse.Namespace) -> dict[str, dict]:
    top = args.time_max_len
    lengths, plans, table = planned(
        args, args.time_responses, args.time_median, top, args.time_per_step, args.time_budget
    )
    g = torch.Generator().manual_seed(args.seed)
    tokens = [torch.randint(0, args.vocab, (n,), generator=g) for n in lengths]  # the same tokens in every plan
    batches = {name: tensors(plan, tokens) for name, plan in plans.items()}  # packed: (B, T) too, as collate gives
    seconds = timings(tiny_lm(args.vocab, top), batches, args.time_chunk, args.repeats)
    timed = {}
    for name, (plan, chunked, packed) in TIMED.items():
        row = dict(table[plan], path=("chunked " if chunked else "full logits ") + ("packed" if packed else "padded"))
        row["seconds"] = seconds[name]
        row["tokens_per_s"] = row["real_tokens"] / statistics.median(seconds[name])
        timed[name] = row
    return timed


def print_table(title: str, table: dict[str, dict]) -> None:
    print(title)
    print(
        f"  {'plan':<16}{'micro-batches':>14}{'padding':>10}{'largest mb':>12}{'real tokens/s':>15}"
        f"{'ratio vs sorted':>17}"
    )
    for name, row in table.items():
        label = f"fixed-B={row['rows']}" if "rows" in row else name
        speed = f"{row['tokens_per_s']:.0f}" if "tokens_per_s" in row else "-"
        ratio = f"{row['tokens_per_s'] / table['sorted']['tokens_per_s']:.2f}x" if "tokens_per_s" in row else "-"
        print(
            f"  {label:<16}{row['micro_batches']:>14}{row['padding']:>10.2%}{row['largest_micro_batch']:>12}"
            f"{speed:>15}{ratio:>17}"
        )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma of the lengths (tail weight)")
    p.add_argument("--min-len", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixed-rows", type=int, default=0, help="B of fixed-B; 0: budget // max length")
    p.add_argument("--responses", type=int, default=4096, help="padding count: responses per epoch")
    p.add_argument("--per-step", type=int, default=512, help="padding count: responses per optimizer step")
    p.add_argument("--median", type=float, default=1024, help="padding count: median length")
    p.add_argument("--max-len", type=int, default=16384, help="padding count: longest length")
    p.add_argument("--budget", type=int, default=65536, help="padding count: padded tokens per micro-batch")
    p.add_argument("--time-responses", type=int, default=512, help="timed: responses (1/32 lengths and budget)")
    p.add_argument("--time-per-step", type=int, default=512)
    p.add_argument("--time-median", type=float, default=32)
    p.add_argument("--time-max-len", type=int, default=512)
    p.add_argument("--time-budget", type=int, default=2048)
    p.add_argument("--time-chunk", type=int, default=32, help="timed: log-prob chunk rows (1024 / 32)")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary of the timed random Llama")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least hurt by a busy machine)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    counted = padding_table(args)
    print_table(
        f"padding over one epoch: {args.responses} responses, {args.per_step} per step, lognormal median "
        f"{args.median:g} sigma {args.sigma:g} in [{args.min_len}, {args.max_len}], budget {args.budget} tokens",
        counted,
    )
    timed = timed_table(args)
    print_table(
        f"forward+backward, random Llama (hidden 256, 4 layers, vocab {args.vocab}, fp32, "
        f"{torch.get_num_threads()} CPU threads): {args.time_responses} responses, {args.time_per_step} per step, "
        f"median {args.time_median:g} in [{args.min_len}, {args.time_max_len}], budget {args.time_budget}, "
        f"chunk {args.time_chunk}, median of {args.repeats}",
        timed,
    )
    if args.json:
        figures = {"args": vars(args) | {"json": str(args.json)}, "padding": counted, "timed": timed}
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
