"""Pretrain the toy policy: a tiny Llama, one token per character, SFT on noisy worked solutions.

The policy learns the task and the noise together: it makes slips at about the rate of its
pretraining data and sometimes corrects them, so its sampled answers hold the right steps
inside wrong answers that negative sample augmentation mines. The result is a plain Hugging
Face folder (weights and tokenizer) that ``model.policy`` names.

    python benchmarks/toy_nsa/pretrain.py --seed 0 --out runs/toy_nsa/seed0/sft
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from arithmetic import LABELS, OPERATIONS, SETTINGS, Setting, heldout, problems, solution  # noqa: E402  (a script beside this one)

PROMPT = "{question}\n"  # the recipe's data.prompt_template: keep the two the same
EOS = "<|endoftext|>"


def build_tokenizer(folder: Path, labelled: bool = False):
    """Byte-level BPE with no merges: one token per character, so digits are tokens. The
    labelled format adds its names and ``:``, and each operation as one token (``-6``): a 2-layer
    policy copies the one token after a name (an induction head), where it misread the digit of
    a two-token operation (``C*3`` for ``C*2``). The short setting's vocabulary stays as it was."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = "0123456789 +-*=|\n{}\\boxedwait," + (LABELS + ":" if labelled else "")
    tok.train_from_iterator([alphabet], trainers.BpeTrainer(vocab_size=1, special_tokens=[EOS]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    if labelled:
        fast.add_tokens([f"{op}{arg}" for op, arg in OPERATIONS])
    fast.save_pretrained(folder)
    return fast


def build_model(tokenizer, hidden: int, layers: int, positions: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 32),
        num_key_value_heads=max(2, hidden // 32),
        max_position_embeddings=positions,  # a prompt and the longest answer
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def batch(tokenizer, rows: list[dict], rng: random.Random, p_fix: float, setting: Setting):
    """Input ids (B, T), and labels (B, T) with -100 on the prompt and the padding."""
    prompts = [tokenizer(PROMPT.format(question=r["question"]))["input_ids"] for r in rows]
    eos = [tokenizer.eos_token_id]
    answers = [tokenizer(solution(r, rng, setting.p_error, p_fix, setting))["input_ids"] + eos for r in rows]
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
    return ids, labels


SAVE_EVERY = 100  # steps between the states a killed pretraining resumes from


def save_state(path: Path, step: int, made: dict, model, optimizer, rng: random.Random) -> None:
    """Everything the next step depends on, written whole or not at all (a kill mid-write
    leaves the previous state)."""
    state = {"made": made, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    state |= {"rng": rng.getstate(), "torch_rng": torch.get_rng_state()}
    torch.save(state, path.with_suffix(".part"))
    path.with_suffix(".part").replace(path)


def resume(path: Path, made: dict, model, optimizer, rng: random.Random) -> int:
    """The step to go on from: that of the state saved in ``path`` by a pretraining with the
    same arguments (``made``), restored into the model, optimizer and streams; else 0."""
    if not path.exists():
        return 0
    state = torch.load(path)
    if state["made"] != made:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    print(f"toy_nsa: pretrain {made['seed']}: resumed at step {state['step']} from {path}", file=sys.stderr)
    return state["step"]


def pretrain(
    seed: int,
    out: Path,
    exclude: frozenset[str],
    steps: int = 900,
    batch_size: int = 64,
    lr: float = 3e-3,
    hidden: int | None = None,
    layers: int = 2,
    p_fix: float = 0.5,
    setting: Setting = SETTINGS["short"],
) -> None:
    """SFT from scratch on ``steps * batch_size`` chains of the seed's own stream, none of whose
    questions is in ``exclude`` (the held-out set). They may repeat each other and the training
    problems: what is learnt there is the skill, and the methods start from it. The chains'
    lengths and slips, and the policy's width unless ``hidden`` is given, are the setting's.
    Killed, it goes on from its last saved state when called again with the same arguments,
    to the same weights bit for bit."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    folder = out.with_name(out.name + ".tmp")  # renamed to ``out`` when whole: a kill leaves no half model
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder, setting.labelled)
    model = build_model(tokenizer, hidden or setting.hidden, layers, positions=setting.positions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    made = {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "hidden": hidden, "layers": layers}
    made |= {"p_fix": p_fix, "setting": repr(setting), "exclude": sorted(exclude)}
    state = folder / "pretrain_state.pt"
    first = resume(state, made, model, optimizer, rng)
    pool = problems(seed, steps * batch_size, "sft", exclude=exclude, unique=False, setting=setting)
    start = time.perf_counter()
    for step in range(first, steps):
        warmup, cosine = min(1.0, (step + 1) / 50), 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * warmup * cosine
        ids, labels = batch(tokenizer, pool[step * batch_size : (step + 1) * batch_size], rng, p_fix, setting)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % SAVE_EVERY == 0:
            save_state(state, step + 1, made, model, optimizer, rng)
        if step % 100 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            print(f"toy_nsa: pretrain {seed}: step {step} loss {loss.item():.3f} ({elapsed:.0f} s)", file=sys.stderr)
    model.save_pretrained(folder)
    state.unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    folder.rename(out)


def sft_loss(folder: Path, seed: int, setting: Setting, chains: int = 256, p_fix: float = 0.5) -> float:
    """The policy in ``folder``'s mean loss per answer token on ``chains`` fresh noisy worked
    solutions of ``setting`` (a stream of their own, not the pretraining one): near the noise's
    own entropy once the chains are learnt, far above it when they are not, or when the policy
    was pretrained on another format."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    rows = problems(seed, chains, "check", unique=False, setting=setting)
    ids, labels = batch(tokenizer, rows, random.Random(seed), p_fix, setting)  # (B, T) each
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heldout", type=int, default=256, help="held-out problems kept out of pretraining")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--hidden", type=int, default=None, help="the policy's width (default: the setting's)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--p_fix", type=float, default=0.5, help="share of slips the next step corrects")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="short", help="chain lengths and slips")
    args = parser.parse_args()
    setting = SETTINGS[args.setting]
    pretrain(
        args.seed,
        args.out,
        frozenset(row["question"] for row in heldout(args.heldout, setting)),
        args.steps,
        lr=args.lr,
        hidden=args.hidden,
        layers=args.layers,
        p_fix=args.p_fix,
        setting=setting,
    )


if __name__ == "__main__":
    main()
