"""Training tokens/s of BCPG-NSA against a plain PyTorch loop, TRL's SFTTrainer and nsa's RFT step.

In one run, on the same randomly initialised model (saved once, loaded by every
contender), the same token ids and the same optimizer steps:

  plain     a plain PyTorch loop on nsa's micro-batches: HF forward with labels (prompt
            and padding at -100), backward, and at each step's last micro-batch clip + AdamW step
  trl       TRL's SFTTrainer as a user runs it: pre-tokenised input_ids + completion_mask
            (completion-only loss), fixed-size micro-batches with gradient accumulation, the
            same responses per step and about as many micro-batches per step as nsa plans
  nsa-rft   nsa's real path: NSAModule.training_step under a minimal Lightning Trainer, fed
            by nsa's StepBatchSampler + collate (token-budget micro-batches), RFT loss plugin
  nsa-bcpg  the same with the BCPG-NSA loss plugin (beta 0.5, tau 1e-3)

Every contender trains the same responses: prompt and response lengths drawn from a
long-tailed (log-normal) distribution with a fixed seed, random token ids. Each contender
runs in its own subprocess, so its peak memory is its own: on CUDA the peak allocated
bytes, on the CPU the growth of the peak RSS (ru_maxrss) over the worker's RSS after its
imports (the model, gradients, AdamW state and activations). The first ``--warmup``
optimizer steps are not timed; ``--rounds`` rounds run every contender once, in a rotated
order, and the median is reported. All use AdamW (lr 1e-5, no weight decay) and clip the
gradient norm at 1.0, as NSAModule and TRL do by default. Ratios are against contenders
of the same run (these machines are noisy):

    OMP_NUM_THREADS=2 python benchmarks/train_throughput.py                  # CPU, ~4 minutes
    python benchmarks/train_throughput.py --preset qwen2.5-0.5b --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

CONTENDERS = ("plain", "trl", "nsa-rft", "nsa-bcpg")
LR = 1e-5
MAX_GRAD_NORM = 1.0


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
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every contender; the median is reported")
    parser.add_argument("--responses-per-step", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4, help="responses per question (share a prompt)")
    parser.add_argument("--tokens-per-micro-batch", type=int, default=4096, help="nsa's padded-token budget")
    parser.add_argument("--prompt-median", type=int, default=96, help="median prompt length (log-normal)")
    parser.add_argument("--response-median", type=int, default=192, help="median response length (log-normal)")
    parser.add_argument("--sigma", type=float, default=0.8, help="log-normal sigma of the response lengths")
    parser.add_argument("--max-length", type=int, default=1536, help="cap on a response's length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)  # internal: run one contender
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


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
        max_position_embeddings=8192,
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

    lengths = [len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows]
    positive = [r["reward"] > 0.5 for r in rows]
    return plan_epoch(lengths, positive, args.responses_per_step, args.tokens_per_micro_batch, args.seed)


def nsa_loader(rows: list[dict], args: argparse.Namespace) -> torch.utils.data.DataLoader:
    """The loader NSADataModule builds: nsa's sampler, rows addressed by Slot, nsa's collate."""
    from nsa.batching import RolloutRows, StepBatchSampler, collate

    lengths = [len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows]
    positive = [r["reward"] > 0.5 for r in rows]
    sampler = StepBatchSampler(lengths, positive, args.responses_per_step, args.tokens_per_micro_batch, args.seed)
    return torch.utils.data.DataLoader(
        RolloutRows(rows), batch_sampler=sampler, collate_fn=functools.partial(collate, pad_id=0)
    )


def nsa_timed_tokens(rows: list[dict], args: argparse.Namespace) -> tuple[int, int]:
    """(real, padded) tokens of nsa's micro-batches in the timed steps."""
    step, real, padded = 0, 0, 0
    for slots in nsa_plan(rows, args):
        lengths = [len(rows[s.row]["prompt_ids"]) + len(rows[s.row]["response_ids"]) for s in slots]
        if step >= args.warmup:
            real, padded = real + sum(lengths), padded + len(lengths) * max(lengths)
        step += slots[-1].last_in_step
    return real, padded


def micro_batches_per_step(rows: list[dict], args: argparse.Namespace) -> int:
    """TRL's gradient accumulation: the divisor of responses_per_step nearest nsa's mean micro-batches a step."""
    mean = len(nsa_plan(rows, args)) / (args.warmup + args.steps)
    divisors = [d for d in range(1, args.responses_per_step + 1) if args.responses_per_step % d == 0]
    return min(divisors, key=lambda d: abs(d - mean))


# ---------------------------------------------------------------- timing and memory (per worker)


class Clock:
    """Wall time between start() and stop(), the device synchronised at both ends."""

    def __init__(self, device: str) -> None:
        self.device, self.begin, self.seconds = device, None, None

    def _now(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        self.begin = self._now()

    def stop(self) -> None:
        self.seconds = self._now() - self.begin


def peak_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def memory_mark(device: str) -> int:
    """The baseline peak memory is measured against: now, after the worker's imports."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return 0
    return peak_rss_bytes()


def memory_peak(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes()


def load_model(args: argparse.Namespace):
    from nsa.models import load_policy

    return load_policy(args.model_dir, args.dtype).to(args.device).train()  # as NSAModule loads it


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.0)


# ---------------------------------------------------------------- contenders


def run_plain(args: argparse.Namespace, rows: list[dict], clock: Clock) -> dict:
    model = load_model(args)
    optimizer = adamw(model.parameters())
    step = 0
    for batch in nsa_loader(rows, args):
        ids = batch.input_ids.to(args.device)  # (B, T)
        labels = ids.masked_fill(~batch.response_mask.to(args.device), -100)  # (B, T) response tokens only
        mask = batch.attention_mask.to(args.device)  # (B, T)
        model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
        if batch.last_in_step:
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == args.warmup:
                clock.start()
    clock.stop()
    real, padded = nsa_timed_tokens(rows, args)
    return {"tokens": real, "padded_tokens": padded}


def run_nsa(args: argparse.Namespace, rows: list[dict], clock: Clock) -> dict:
    import lightning as L

    from nsa.module import NSAModule
    from nsa.plugins.losses.bcpg import BCPG
    from nsa.plugins.losses.rft import RFT

    class StepClock(L.Callback):
        """Starts the clock when the warm-up's last optimizer step is done."""

        steps = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps += batch.last_in_step
            if batch.last_in_step and self.steps == args.warmup:
                clock.start()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            clock.stop()

    loss = BCPG(beta=0.5, tau=1e-3) if args.worker == "nsa-bcpg" else RFT()
    module = NSAModule(args.model_dir, loss, optimizer=adamw, max_grad_norm=MAX_GRAD_NORM)
    trainer = L.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision="bf16-true" if args.dtype == "bfloat16" else "32-true",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepClock()],
    )
    trainer.fit(module, train_dataloaders=nsa_loader(rows, args))
    real, padded = nsa_timed_tokens(rows, args)
    return {"tokens": real, "padded_tokens": padded}


class CountingCollator:
    """TRL's own collator, noting each micro-batch's (real, padded) tokens in the order it is built."""

    def __init__(self, inner) -> None:
        self.inner, self.counts = inner, []

    def __call__(self, examples: list[dict]) -> dict:
        out = self.inner(examples)
        self.counts.append((int(out["attention_mask"].sum()), out["input_ids"].numel()))
        return out


def run_trl(args: argparse.Namespace, rows: list[dict], clock: Clock) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class StepClock(TrainerCallback):
        def on_step_end(self, train_args, state, control, **_) -> None:
            if state.global_step == args.warmup:
                clock.start()
            elif state.global_step == args.warmup + args.steps:
                clock.stop()

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
            callbacks=[StepClock()],
        )
        trainer.train()
    timed = collator.counts[args.warmup * accumulation :]  # micro-batches come in order
    assert len(collator.counts) == (args.warmup + args.steps) * accumulation, len(collator.counts)
    return {"tokens": sum(c[0] for c in timed), "padded_tokens": sum(c[1] for c in timed), "accumulation": accumulation}


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


def worker(args: argparse.Namespace) -> None:
    """Run one contender and write its timing and memory as JSON."""
    import_contender(args.worker)
    rows = make_rows(args)
    base = memory_mark(args.device)
    clock = Clock(args.device)
    run = {"plain": run_plain, "trl": run_trl}.get(args.worker, run_nsa)
    out = run(args, rows, clock)
    out.update(seconds=clock.seconds, base_bytes=base, peak_bytes=memory_peak(args.device))
    out["threads"] = torch.get_num_threads()
    Path(args.result).write_text(json.dumps(out))


# ---------------------------------------------------------------- orchestration and report


def spawn(name: str, args: argparse.Namespace, folder: str, argv: list[str]) -> dict | str:
    """One contender in a fresh process; its result, or the reason it failed."""
    result = Path(folder) / f"{name}.json"
    command = [sys.executable, __file__, *argv, "--worker", name, "--model-dir", folder, "--result", str(result)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"failed: {tail}"
    return json.loads(result.read_text())


def contenders(args: argparse.Namespace) -> list[str]:
    names = list(args.only)
    if "trl" in names and importlib.util.find_spec("trl") is None:
        print("TRL: not installed (pip install trl)", flush=True)
        names.remove("trl")
    return names


def orchestrate(args: argparse.Namespace, argv: list[str]) -> dict:
    names = contenders(args)
    runs: dict[str, list] = {name: [] for name in names}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as folder:
        params = save_model(args, folder)
        for k in range(args.rounds):
            order = names[k % len(names) :] + names[: k % len(names)]  # rotate: no contender always runs first
            for name in (n for n in order if n not in failed):
                out = spawn(name, args, folder, argv)
                if isinstance(out, str):
                    failed[name] = out
                    print(f"{name}: {out}", flush=True)
                    continue
                runs[name].append(out)
                print(f"round {k + 1} {name}: {out['tokens'] / out['seconds']:.0f} tokens/s", flush=True)
    return {"params": params, "runs": {n: r for n, r in runs.items() if r}, "failed": failed}


def summarise(results: dict, args: argparse.Namespace) -> dict:
    """Medians over rounds, then ratios between the medians."""
    summary = {}
    for name, runs in results["runs"].items():
        summary[name] = {
            "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
            "s_per_step": statistics.median(r["seconds"] / args.steps for r in runs),
            "padding": 1.0 - runs[0]["tokens"] / runs[0]["padded_tokens"],  # share of pad tokens
            "peak_mib": statistics.median((r["peak_bytes"] - r["base_bytes"]) / 2**20 for r in runs),
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
        ("BCPG-NSA tokens/s >= 0.9x plain loop", bcpg["vs_plain"] if have else None, lambda r: r >= 0.9),
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
        f"{args.steps} timed steps of {args.responses_per_step} responses after {args.warmup} warm-up, "
        f"median of {args.rounds} rounds"
    )
    print(f"{'contender':<10} {'tokens/s':>9} {'s/step':>7} {'vs plain':>9} {'vs TRL':>7} {'pad %':>6} {memory:>15}")
    for name, row in summary.items():
        cells = [f"{row[k]:.2f}x" if row[k] is not None else "-" for k in ("vs_plain", "vs_trl")]
        print(
            f"{name:<10} {row['tokens_per_s']:>9.0f} {row['s_per_step']:>7.2f} {cells[0]:>9} {cells[1]:>7} "
            f"{row['padding']:>6.1%} {row['peak_mib']:>15.0f}"
        )
    for name, why in results["failed"].items():
        print(f"{name:<10} {why}")
    for what, r, met in targets(summary):
        shown = "-" if r is None else f"{r:.2f}x"
        print(f"target: {what:<42} {shown:>6}  {'-' if met is None else ('met' if met else 'NOT met')}")


def main() -> None:
    argv = sys.argv[1:]
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    results = orchestrate(args, argv)
    summary = summarise(results, args)
    report(results, summary, args)
    if args.json:
        document = {"config": vars(args), "summary": summary, "targets": targets(summary), **results}
        Path(args.json).write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
