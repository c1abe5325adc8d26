"""Training tokens/s of BCPG-NSA against a plain PyTorch loop, TRL's SFTTrainer and nsa's RFT step.

In one run, on the same randomly initialised model (saved once, loaded by every
contender), the same token ids and the same optimizer steps:

  plain     a plain PyTorch loop on nsa's micro-batches: HF forward with labels (prompt
            and padding at -100; packed micro-batches as one row with per-row position ids),
            backward, and at each step's last micro-batch clip + AdamW step
  trl       TRL's SFTTrainer as a user runs it: pre-tokenised input_ids + completion_mask
            (completion-only loss), fixed-size micro-batches with gradient accumulation, the
            same responses per step and about as many micro-batches per step as nsa plans
            (TRL 1.x scores tokens with its tiled LM-head kernel, which also computes entropy
            and top-1 accuracy; on a CPU that costs more than a plain LM head and loss)
  nsa-rft   nsa's real path: NSAModule.training_step under a minimal Lightning Trainer, fed
            by nsa's StepBatchSampler + collate (token-budget micro-batches), RFT loss plugin;
            log-probs through NSAModule's PolicyScorer (chunked output layer, --logprob-chunk-tokens)
  nsa-bcpg  the same with the BCPG-NSA loss plugin (beta 0.5, tau 1e-3)
  nsa-bcpg-eager  (only with --only) NSAModule's work without Lightning: PolicyScorer +
            BCPG-NSA, backward, clip, step; tells a gap to plain in Lightning from one in the loss path

Micro-batches are planned as NSADataModule plans them: ``--padding-free`` auto (its default,
data.padding_free null) packs rows (a budget of real tokens, collate(packed=True), rows run as
one sequence) only under a variable-length attention (--attn-implementation flash_attention_2
or flex_attention, GPU); with sdpa (the default, and the only choice on a CPU) they are
padded and sorted by length. NSAModule's on_fit_start probes whether the policy keeps packed
rows apart, as in a real run; the eager contender runs the same probe.

Every contender trains the same responses: prompt and response lengths drawn from a
long-tailed (log-normal) distribution with a fixed seed, random token ids. All use AdamW
(lr 1e-5, no weight decay) and clip the gradient norm at 1.0, as NSAModule and TRL do by
default. The first ``--warmup`` optimizer steps are not timed.

Each contender has its own worker process (started once; each round reloads the saved
model and trains the epoch afresh), so its peak memory is its own: on CUDA the peak
allocated bytes; on the CPU the growth of the peak RSS (VmHWM, reset after the worker's
imports) over its RSS then, i.e. the model, gradients, AdamW state and activations, from
round 1. ``--rounds`` rounds run every contender once, one at a time in a rotated order,
each optimizer step timed on its own. The table's tokens/s takes each step's quickest
round (the one least disturbed by other processes on a shared machine; a step trains the
same tokens every round) and also gives the median run. Ratios compare the former, all
from the same run:

    OMP_NUM_THREADS=2 python benchmarks/train_throughput.py     # CPU, about 2 minutes on 2 idle cores
    python benchmarks/train_throughput.py --preset qwen2.5-0.5b --dtype bfloat16 \\
        --tokens-per-micro-batch 16384 --response-median 512 --max-length 4096   # on a GPU
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

CONTENDERS = ("plain", "trl", "nsa-rft", "nsa-bcpg")
EXTRA = ("nsa-bcpg-eager",)  # on request (--only): where a gap to plain comes from, Lightning or the loss path
LR = 1e-5
MAX_GRAD_NORM = 1.0
WIDTHS = (9, 7, 7, 9, 7, 6, 14)  # the table's columns after the name's


class Preset(NamedTuple):
    """A Qwen2-architecture model; only its shape matters (the weights are random)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool


PRESETS = {
    "small": Preset(256, 1024, 4, 4, 2, 8192, False),  # a few minutes on 2 CPU cores
    "qwen2.5-0.5b": Preset(896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": Preset(1536, 8960, 28, 12, 2, 151936, True),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps run before timing (at least 1)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--rounds", type=int, default=5, help="runs of every contender, interleaved")
    parser.add_argument("--responses-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4, help="responses per question (share a prompt)")
    parser.add_argument(
        "--tokens-per-micro-batch", type=int, default=1024, help="nsa's token budget (real tokens when packed)"
    )
    parser.add_argument("--prompt-median", type=int, default=64, help="median prompt length (log-normal)")
    parser.add_argument("--response-median", type=int, default=128, help="median response length (log-normal)")
    parser.add_argument("--sigma", type=float, default=0.8, help="log-normal sigma of the response lengths")
    parser.add_argument("--max-length", type=int, default=768, help="cap on a response's length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--padding-free", choices=["auto", "true", "false"], default="auto", help="as data.padding_free (auto: null)"
    )
    parser.add_argument(
        "--logprob-chunk-tokens", type=int, default=1024, help="model.logprob_chunk_tokens (0: null, full logits)"
    )
    parser.add_argument("--attn-implementation", default=None, help="model.attn_implementation (default sdpa)")
    parser.add_argument("--only", nargs="+", choices=CONTENDERS + EXTRA, default=list(CONTENDERS))
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.packed = packs(args)
    return args


def packs(args: argparse.Namespace) -> bool:
    """Whether nsa plans and runs packed micro-batches: NSADataModule's rule for data.padding_free
    (auto: only under a variable-length attention; the policy's probe is NSAModule's, at fit start)."""
    from nsa.logprobs import VARLEN_ATTENTION

    if args.padding_free != "auto":
        return args.padding_free == "true"
    return (args.attn_implementation or "sdpa") in VARLEN_ATTENTION


# ---------------------------------------------------------------- model and data (shared)


def save_model(args: argparse.Namespace, folder: str) -> int:
    """Save the random model once, so every worker loads the very same weights; returns its size."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    p = PRESETS[args.preset]
    config = Qwen2Config(
        vocab_size=p.vocab,
        hidden_size=p.hidden,
        intermediate_size=p.intermediate,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        max_position_embeddings=max(8192, 512 + args.max_length),  # prompts are capped at 512
        tie_word_embeddings=p.tied,
        pad_token_id=0,
    )
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    return sum(t.numel() for t in model.parameters())


def lognormal(rng: random.Random, median: int, sigma: float, cap: int) -> int:
    return max(8, min(cap, int(rng.lognormvariate(math.log(median), sigma))))


def make_rows(args: argparse.Namespace) -> list[dict]:
    """Exactly (warmup + steps) x responses_per_step rows in the final-stage format collate reads.

    Each question has ``group_size`` responses with one prompt, 0/1 rewards, and on each
    negative a mined step (nsa_mask) over a random part of its response.
    """
    rng = random.Random(args.seed)
    vocab = PRESETS[args.preset].vocab
    rows = []
    total = (args.warmup + args.steps) * args.responses_per_step
    for q in range(-(-total // args.group_size)):
        prompt = [rng.randrange(1, vocab) for _ in range(lognormal(rng, args.prompt_median, 0.5, 512))]
        group = [response_row(rng, vocab, args, prompt, f"q{q}") for _ in range(args.group_size)]
        rows += with_group_stats(group)
    return rows[:total]


def response_row(rng: random.Random, vocab: int, args: argparse.Namespace, prompt: list[int], group: str) -> dict:
    length = lognormal(rng, args.response_median, args.sigma, args.max_length)
    reward = float(rng.random() < 0.5)
    start, stop = sorted(rng.randrange(length + 1) for _ in range(2))
    mined = [reward == 0.0 and start <= t < stop for t in range(length)]
    return {
        "prompt_ids": prompt,
        "response_ids": [rng.randrange(1, vocab) for _ in range(length)],
        "nsa_mask": mined,
        "reward": reward,
        "ref_logprobs": [-math.log(vocab)] * length,  # about a random model's; only the loss's value depends on it
        "group": group,
    }


def with_group_stats(group: list[dict]) -> list[dict]:
    rewards = [r["reward"] for r in group]
    mean, std = statistics.fmean(rewards), statistics.stdev(rewards) if len(rewards) > 1 else 0.0
    return [{**r, "reward_mean": mean, "reward_std": std} for r in group]


def nsa_plan(rows: list[dict], args: argparse.Namespace):
    """nsa's micro-batches of epoch 0 (the plan StepBatchSampler yields)."""
    from nsa.batching import plan_epoch
    from nsa.contracts import is_correct

    lengths = [len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows]
    positive = [is_correct(r["reward"]) for r in rows]
    return plan_epoch(
        lengths, positive, args.responses_per_step, args.tokens_per_micro_batch, args.seed, packed=args.packed
    )


def nsa_loader(rows: list[dict], args: argparse.Namespace) -> torch.utils.data.DataLoader:
    """The loader NSADataModule builds: nsa's sampler, rows addressed by Slot, nsa's collate."""
    from nsa.batching import RolloutRows, StepBatchSampler, collate
    from nsa.contracts import is_correct

    lengths = [len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows]
    positive = [is_correct(r["reward"]) for r in rows]
    sampler = StepBatchSampler(
        lengths, positive, args.responses_per_step, args.tokens_per_micro_batch, args.seed, packed=args.packed
    )
    return torch.utils.data.DataLoader(
        RolloutRows(rows), batch_sampler=sampler, collate_fn=functools.partial(collate, pad_id=0, packed=args.packed)
    )


def nsa_step_tokens(rows: list[dict], args: argparse.Namespace) -> list[tuple[int, int]]:
    """(real, computed) tokens of each timed step of nsa's plan: a padded micro-batch computes
    rows x its longest row, a packed one its real tokens."""
    steps = [(0, 0)]
    for slots in nsa_plan(rows, args):
        lengths = [len(rows[s.row]["prompt_ids"]) + len(rows[s.row]["response_ids"]) for s in slots]
        real, padded = steps[-1]
        steps[-1] = (real + sum(lengths), padded + (sum(lengths) if args.packed else len(lengths) * max(lengths)))
        if slots[-1].last_in_step:
            steps.append((0, 0))
    return steps[args.warmup : args.warmup + args.steps]


def micro_batches_per_step(rows: list[dict], args: argparse.Namespace) -> int:
    """TRL's gradient accumulation: the divisor of responses_per_step nearest nsa's mean micro-batches a step."""
    mean = len(nsa_plan(rows, args)) / (args.warmup + args.steps)
    divisors = [d for d in range(1, args.responses_per_step + 1) if args.responses_per_step % d == 0]
    return min(divisors, key=lambda d: abs(d - mean))


# ---------------------------------------------------------------- timing and memory (per worker)


class StepClock:
    """Seconds of each optimizer step after the warm-up, the device synchronised at each mark.

    Steps are timed one by one so that the summary can take, for each step, its quickest
    round: a burst of load from another process then spoils one step of one round, not a run.
    """

    def __init__(self, device: str, warmup: int) -> None:
        self.device, self.warmup = device, warmup
        self.done, self.last, self.seconds = 0, 0.0, []

    def step_done(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.done += 1
        if self.done > self.warmup:
            self.seconds.append(now - self.last)
        self.last = now


def proc_status(field: str) -> int | None:
    """A memory field of /proc/self/status in bytes (Linux), None elsewhere."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.exists() else []
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":")), None)


def reset_peak_rss() -> bool:
    """Set the peak RSS (VmHWM) to the current RSS. Not ru_maxrss: a child inherits its parent's
    high-water mark through fork + exec, which would hide the worker's own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_status("VmHWM") is not None


def memory_mark(device: str) -> int:
    """The baseline peak memory is measured against: now, after the imports (or the last round's cleanup)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return 0
    if reset_peak_rss():
        return proc_status("VmRSS")
    return max_rss()  # elsewhere: the high-water mark so far, which may overstate the base


def memory_peak(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return proc_status("VmHWM") or max_rss()


def max_rss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def load_model(args: argparse.Namespace):
    from nsa.models import load_policy

    model = load_policy(args.model_dir, args.dtype, attn_implementation=args.attn_implementation)
    return model.to(args.device).train()  # as NSAModule loads it


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.0)


# ---------------------------------------------------------------- contenders


def run_plain(args: argparse.Namespace, rows: list[dict], clock: StepClock) -> list[tuple[int, int]]:
    model = load_model(args)
    optimizer = adamw(model.parameters())
    for batch in nsa_loader(rows, args):
        ids = batch.input_ids.to(args.device)  # (B, T)
        labels = ids.masked_fill(~batch.response_mask.to(args.device), -100)  # (B, T) response tokens only
        mask = batch.attention_mask.to(args.device)  # (B, T)
        if batch.packed:  # one (1, N) row of the real tokens; a row's first token is a prompt's (label -100)
            real = mask.flatten().nonzero().squeeze(1)  # (N,)
            positions = (mask.cumsum(1) - 1).flatten()[real].unsqueeze(0)  # (1, N)
            ids, labels = ids.flatten()[real].unsqueeze(0), labels.flatten()[real].unsqueeze(0)  # (1, N)
            out = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False)
        else:
            out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        out.loss.backward()
        if batch.last_in_step:
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad()
            clock.step_done()
    return nsa_step_tokens(rows, args)


def run_eager(args: argparse.Namespace, rows: list[dict], clock: StepClock) -> list[tuple[int, int]]:
    """NSAModule.training_step's work without Lightning: its PolicyScorer, BCPG-NSA, backward, clip, step."""
    from nsa.logprobs import PolicyScorer, packing_leaks
    from nsa.plugins.losses.bcpg import BCPG

    scorer, loss = PolicyScorer(load_model(args), args.logprob_chunk_tokens or None), BCPG(beta=0.5, tau=1e-3)
    if args.packed and packing_leaks(scorer, scorer.model.config.vocab_size):  # NSAModule.on_fit_start's probe
        raise RuntimeError("packed rows attend to each other under this attention; use --padding-free false")
    optimizer = adamw(scorer.parameters())
    for batch in nsa_loader(rows, args):
        batch = to_device(batch, args.device)
        logprobs = scorer(batch.input_ids, batch.attention_mask, packed=batch.packed)  # (B, T) float32
        loss(batch, logprobs).loss.backward()
        if batch.last_in_step:
            torch.nn.utils.clip_grad_norm_(scorer.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad()
            clock.step_done()
    return nsa_step_tokens(rows, args)


def to_device(batch, device: str):
    from dataclasses import fields, replace

    tensors = {f.name: getattr(batch, f.name) for f in fields(batch) if torch.is_tensor(getattr(batch, f.name))}
    return replace(batch, **{name: value.to(device) for name, value in tensors.items()})


def run_nsa(args: argparse.Namespace, rows: list[dict], clock: StepClock) -> list[tuple[int, int]]:
    import lightning as L

    from nsa.module import NSAModule
    from nsa.plugins.losses.bcpg import BCPG
    from nsa.plugins.losses.rft import RFT

    class Steps(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch.last_in_step:  # NSAModule has just stepped the optimizer
                clock.step_done()

    loss = BCPG(beta=0.5, tau=1e-3) if args.worker == "nsa-bcpg" else RFT()
    module = NSAModule(
        args.model_dir,
        loss,
        optimizer=adamw,
        max_grad_norm=MAX_GRAD_NORM,
        logprob_chunk_tokens=args.logprob_chunk_tokens or None,
        attn_implementation=args.attn_implementation,
    )  # Trainer.fit calls its on_fit_start: the packing probe a packed micro-batch needs
    trainer = L.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision="bf16-true" if args.dtype == "bfloat16" else "32-true",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Steps()],
    )
    trainer.fit(module, train_dataloaders=nsa_loader(rows, args))
    return nsa_step_tokens(rows, args)


class CountingCollator:
    """TRL's own collator, noting each micro-batch's (real, padded) tokens in the order it is built."""

    def __init__(self, inner) -> None:
        self.inner, self.counts = inner, []

    def __call__(self, examples: list[dict]) -> dict:
        out = self.inner(examples)
        self.counts.append((int(out["attention_mask"].sum()), out["input_ids"].numel()))
        return out


def run_trl(args: argparse.Namespace, rows: list[dict], clock: StepClock) -> list[tuple[int, int]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class Steps(TrainerCallback):
        def on_step_end(self, train_args, state, control, **_) -> None:
            clock.step_done()

    accumulation = micro_batches_per_step(rows, args)
    collator = CountingCollator(DataCollatorForLanguageModeling(pad_token_id=0))
    with tempfile.TemporaryDirectory() as out:
        model = load_model(args)
        trainer = SFTTrainer(
            model=model,
            args=trl_config(args, out, accumulation),
            data_collator=collator,
            train_dataset=Dataset.from_list([trl_row(r) for r in rows]),
            processing_class=pad_tokenizer(),
            optimizers=(adamw(model.parameters()), None),
            callbacks=[Steps()],
        )
        trainer.train()
    assert len(collator.counts) == (args.warmup + args.steps) * accumulation, len(collator.counts)
    counts = collator.counts  # in the order the micro-batches were built: the training order
    steps = [counts[k * accumulation : (k + 1) * accumulation] for k in range(args.warmup + args.steps)]
    return [(sum(c[0] for c in step), sum(c[1] for c in step)) for step in steps[args.warmup :]]


def trl_config(args: argparse.Namespace, out: str, accumulation: int):
    """SFTConfig for a like-for-like run: TRL's own defaults of gradient checkpointing and
    bf16 autocast off (the model's dtype decides), no truncation, no logging, eval or saving."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=out,
        per_device_train_batch_size=args.responses_per_step // accumulation,
        gradient_accumulation_steps=accumulation,
        max_steps=args.warmup + args.steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_grad_norm=MAX_GRAD_NORM,
        gradient_checkpointing=False,
        bf16=False,
        max_length=None,
        completion_only_loss=True,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
        seed=args.seed,
    )


def trl_row(row: dict) -> dict:
    ids = row["prompt_ids"] + row["response_ids"]
    return {"input_ids": ids, "completion_mask": [0] * len(row["prompt_ids"]) + [1] * len(row["response_ids"])}


def pad_tokenizer():
    """SFTTrainer wants a tokenizer for its pad id; the data is already token ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(WordLevel({"<pad>": 0}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", eos_token="<pad>")


def import_contender(name: str) -> None:
    """Import what a contender needs before the memory baseline, so imports are not counted as training."""
    import transformers  # noqa: F401

    import nsa.batching  # noqa: F401
    import nsa.models  # noqa: F401

    if name == "trl":
        import datasets  # noqa: F401
        import trl  # noqa: F401
    elif name.startswith("nsa"):
        import lightning  # noqa: F401

        import nsa.module  # noqa: F401
        import nsa.plugins.losses.bcpg  # noqa: F401


def serve(args: argparse.Namespace, conn, log: str) -> None:
    """A worker process: one contender, one round each time the parent asks, until it sends None."""
    quiet(log)
    try:
        import_contender(args.worker)
    except Exception as err:  # TRL present but broken, say: the others still run
        conn.send(f"failed: {type(err).__name__}: {err}")
        return
    rows = make_rows(args)
    conn.send("ready")
    while conn.recv() is not None:
        try:
            conn.send(run_round(args, rows))
        except Exception as err:  # reported in the table; the other contenders go on
            conn.send(f"failed: {type(err).__name__}: {err}")
            return


def quiet(log: str) -> None:
    """Send the libraries' chatter (Lightning, TRL, transformers) to a log file, not under the table."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def run_round(args: argparse.Namespace, rows: list[dict]) -> dict:
    """Train the epoch once from the saved model; per-step seconds and tokens, and memory."""
    base = memory_mark(args.device)
    clock = StepClock(args.device, args.warmup)
    run = {"plain": run_plain, "trl": run_trl, "nsa-bcpg-eager": run_eager}.get(args.worker, run_nsa)
    steps = run(args, rows, clock)
    out = {"seconds": clock.seconds, "tokens": [t[0] for t in steps], "padded_tokens": [t[1] for t in steps]}
    out.update(base_bytes=base, peak_bytes=memory_peak(args.device), threads=torch.get_num_threads())
    gc.collect()  # the round's model, optimizer and trainer, so the next round starts as this one did
    if args.device == "cuda":
        torch.cuda.empty_cache()  # and the other workers find the GPU's memory free
    return out


# ---------------------------------------------------------------- orchestration and report


class Worker(NamedTuple):
    process: multiprocessing.Process
    conn: multiprocessing.connection.Connection
    log: Path


def start(name: str, args: argparse.Namespace, folder: str) -> Worker:
    """A fresh interpreter (spawn) for one contender: its memory and imports are its own."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    log = Path(folder) / f"{name}.log"
    own = argparse.Namespace(**vars(args), worker=name, model_dir=folder)
    process = context.Process(target=serve, args=(own, child, str(log)))
    process.start()
    return Worker(process, parent, log)


def ask(worker: Worker, message: int | None) -> dict | str:
    """Send ``message`` (None: send nothing) and wait for the answer; the last log line of a dead worker."""
    try:
        if message is not None:
            worker.conn.send(message)
        return worker.conn.recv()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        worker.process.join(5)
        lines = worker.log.read_text(errors="replace").strip().splitlines() if worker.log.exists() else []
        return f"failed: worker died (exit code {worker.process.exitcode}): {(lines or ['no output'])[-1]}"


def contenders(args: argparse.Namespace) -> list[str]:
    names = list(args.only)
    if "trl" in names and importlib.util.find_spec("trl") is None:
        print("TRL: not installed (pip install trl)", flush=True)
        names.remove("trl")
    return names


def orchestrate(args: argparse.Namespace) -> dict:
    """Every contender's worker starts at once; then rounds, one contender training at a time."""
    names = contenders(args)
    runs: dict[str, list] = {name: [] for name in names}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as folder:
        params = save_model(args, folder)
        workers = {name: start(name, args, folder) for name in names}
        try:
            for name, worker in workers.items():
                if (answer := ask(worker, None)) != "ready":
                    failed[name] = answer
            for k in range(args.rounds):
                order = names[k % len(names) :] + names[: k % len(names)]  # rotated: none always runs first
                for name in (n for n in order if n not in failed):
                    answer = ask(workers[name], k)
                    if isinstance(answer, str):
                        failed[name] = answer
                        continue
                    runs[name].append(answer)
                    print(f"round {k + 1} {name}: {speed(answer):.0f} tokens/s", flush=True)
        finally:
            stop(workers.values())
    for name, why in failed.items():
        print(f"{name}: {why}", flush=True)
    return {"params": params, "runs": {n: r for n, r in runs.items() if r}, "failed": failed}


def stop(workers) -> None:
    for worker in workers:
        if worker.process.is_alive():
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        worker.process.join(30)
        if worker.process.is_alive():
            worker.process.terminate()


def speed(run: dict) -> float:
    return sum(run["tokens"]) / sum(run["seconds"])


def summarise(results: dict, args: argparse.Namespace) -> dict:
    """Per contender, each step's quickest round (the same step trains the same tokens every
    round), and the median run; ratios between the quickest. s/step: plain, RFT and BCPG train
    the same steps, so their s/step compare like for like."""
    summary = {}
    for name, runs in results["runs"].items():
        quickest = [min(steps) for steps in zip(*(r["seconds"] for r in runs))]  # (steps,)
        summary[name] = {
            "tokens_per_s": sum(runs[0]["tokens"]) / sum(quickest),
            "median_tokens_per_s": statistics.median(speed(r) for r in runs),
            "s_per_step": sum(quickest) / args.steps,
            "padding": 1.0 - sum(runs[0]["tokens"]) / sum(runs[0]["padded_tokens"]),  # pad share of the steps
            "peak_mib": (runs[0]["peak_bytes"] - runs[0]["base_bytes"]) / 2**20,  # round 1: a fresh process
        }
    for base in ("plain", "trl"):
        for row in summary.values():
            row[f"vs_{base}"] = row["tokens_per_s"] / summary[base]["tokens_per_s"] if base in summary else None
    return summary


def targets(summary: dict) -> list[tuple[str, float | None, bool | None]]:
    """The issue's targets for BCPG-NSA: (what, measured ratio, met); None where a contender is missing."""
    bcpg = summary.get("nsa-bcpg")
    have = bcpg is not None
    checks = [
        ("BCPG-NSA tokens/s >= 0.95x plain loop", bcpg["vs_plain"] if have else None, lambda r: r >= 0.95),
        ("BCPG-NSA tokens/s >= 1.2x TRL SFTTrainer", bcpg["vs_trl"] if have else None, lambda r: r >= 1.2),
        ("BCPG-NSA step time <= 1.05x RFT step", step_ratio(summary, "nsa-bcpg", "nsa-rft"), lambda r: r <= 1.05),
    ]
    return [(what, r, None if r is None else test(r)) for what, r, test in checks]


def step_ratio(summary: dict, name: str, base: str) -> float | None:
    """Seconds per step of ``name`` over ``base``: the same batches, so the same tokens a step."""
    if name not in summary or base not in summary:
        return None
    return summary[name]["s_per_step"] / summary[base]["s_per_step"]


def report(results: dict, summary: dict, args: argparse.Namespace) -> None:
    memory = "peak alloc MiB" if args.device == "cuda" else "peak RSS +MiB"
    threads = next(iter(results["runs"].values()))[0]["threads"] if results["runs"] else "-"
    print(
        f"\n{args.preset} ({results['params'] / 1e6:.1f}M params, {args.dtype}) on {args.device}, {threads} threads; "
        f"{args.steps} timed step(s) of {args.responses_per_step} responses after {args.warmup} warm-up, "
        f"each step's quickest of {args.rounds} rounds (and the median run); micro-batches "
        f"{'packed' if args.packed else 'padded'}, log-prob chunk {args.logprob_chunk_tokens or 'null (full logits)'}"
    )
    header = ("contender", "tokens/s", "median", "s/step", "vs plain", "vs TRL", "pad %", memory)
    print(table_row(header))
    for name, row in summary.items():
        cells = [f"{row[k]:.2f}x" if row[k] is not None else "-" for k in ("vs_plain", "vs_trl")]
        values = (name, f"{row['tokens_per_s']:.0f}", f"{row['median_tokens_per_s']:.0f}", f"{row['s_per_step']:.2f}")
        values += (*cells, f"{row['padding']:.1%}", f"{row['peak_mib']:.0f}")
        print(table_row(values))
    for name, why in results["failed"].items():
        print(f"{name:<14} {why}")
    for what, r, met in targets(summary):
        shown = "-" if r is None else f"{r:.2f}x"
        print(f"target: {what:<42} {shown:>6}  {'-' if met is None else ('met' if met else 'NOT met')}")


def table_row(values: tuple[str, ...]) -> str:
    return f"{values[0]:<14} " + " ".join(f"{v:>{w}}" for v, w in zip(values[1:], WIDTHS))


def main() -> None:
    args = parse_args(sys.argv[1:])
    results = orchestrate(args)
    summary = summarise(results, args)
    report(results, summary, args)
    if args.json:
        document = {"config": vars(args), "summary": summary, "targets": targets(summary), **results}
        Path(args.json).write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
