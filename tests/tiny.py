"""Tiny real Hugging Face models for tests, built locally (no hub).

A 2-layer Llama (hidden 64) with a byte-level BPE trained on the repo's word problems.
Llama, not Qwen2: transformers' AutoTokenizer swaps a Qwen2 folder's tokenizer class,
which changes a custom BPE's ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = REPO / "data" / "word_problems.jsonl"


def corpus() -> list[str]:
    rows = [json.loads(line) for line in PROBLEMS.read_text().splitlines()]
    extra = ["12 * 7 = 84", "84 - 15 = 69", "The answer is \\boxed{69}.", "Step 1:\n\nStep 2:"]
    return [r["question"] for r in rows] + extra


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


def tiny_config(tokenizer, **overrides):
    """A 2-layer Llama config (hidden 64) sized to ``tokenizer``; ``overrides`` change any field."""
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        num_labels=2,
    )
    return LlamaConfig(**{**fields, **overrides})


def build_model(folder: Path, seed: int = 0, head: str = "LlamaForCausalLM", **overrides) -> Path:
    """Save a tiny random Llama (``head``: a transformers class name) and its tokenizer in ``folder``."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder)
    torch.manual_seed(seed)
    getattr(transformers, head)(tiny_config(tokenizer, **overrides)).save_pretrained(folder)
    return folder


def make_eager_eos(source: str, folder: Path, eos_scale: float) -> str:
    """A copy of the tiny model in ``folder`` that ends answers often, for sampler tests.

    A random tiny Llama gives EOS about 1/400 per token, so no answer would ever stop. Adding a
    unit vector u to every embedding makes the last hidden state point mostly along u (|h| ~
    sqrt(hidden) after RMSNorm); an EOS row of ``eos_scale`` u then gives EOS a logit of about
    eos_scale * sqrt(hidden) while the others stay near 0.
    """
    from nsa.models import load_policy, load_tokenizer

    model, tokenizer = load_policy(source), load_tokenizer(source)
    u = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    u /= u.norm()
    with torch.no_grad():
        model.model.embed_tokens.weight += u
        model.lm_head.weight[tokenizer.eos_token_id] = eos_scale * u
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
