"""HFSampler's step time against plain generate (its inverse-CDF draw and its CPU attention), and its two caches.

SmolLM2-135M's shape (30 layers, hidden 576, 9 heads of which 3 for keys and values, vocabulary
49152) with random weights, so nothing is downloaded: ``--prompts`` prompts of 67 to 75 tokens
(left-padded, as the quickstart's are) x 4 answers of ``--max-new-tokens`` tokens, one batch. The
baseline is generate's ``do_sample=True`` (torch.multinomial draws an exponential per vocabulary
entry and row) with transformers' sdpa (which copies the key/value cache per query head when a
batch has a mask) on the dynamic cache; HFSampler (its draw, and ``gqa_sdpa``) then runs with each
cache. Each setting is scored by its quickest of ``--rounds`` rounds (these machines are noisy),
and reported as seconds per step (the prefill of about 70 tokens x 4 answers included) and as a
ratio to the baseline.

    OMP_NUM_THREADS=2 python benchmarks/hf_draw.py      # about four minutes
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="prompts in the batch (4 answers each)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args()


def smollm2_shape(folder: str) -> None:
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, tie_word_embeddings=True, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")))
    tokenizer.add_special_tokens({"eos_token": "t0", "pad_token": "t0"})
    tokenizer.save_pretrained(folder)


def multinomial(model, prompts: list[list[int]], max_new: int) -> None:
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # (P, W) left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (P, W)
    model.generate(
        input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, temperature=0.7,
        max_new_tokens=max_new, num_return_sequences=4, pad_token_id=0, cache_implementation="dynamic",
    )  # fmt: skip


def main() -> None:
    from nsa.models import load_policy
    from nsa.plugins.samplers.hf_generate import HFSampler

    args = parse_args()
    with tempfile.TemporaryDirectory() as folder:
        smollm2_shape(folder)
        prompts = [torch.randint(1, 49152, (67 + i % 9,)).tolist() for i in range(args.prompts)]
        model = load_policy(folder).eval()
        runs = {"generate's multinomial and sdpa": lambda: multinomial(model, prompts, args.max_new_tokens)}
        for cache in ("dynamic", "static"):
            sampler = HFSampler(4, 0.7, max_new_tokens=args.max_new_tokens, batch_size=args.prompts,
                                cache_implementation=cache)  # fmt: skip
            runs[f"HFSampler, {cache} cache"] = lambda s=sampler: s.sample(folder, prompts)
        best = {name: float("inf") for name in runs}
        with torch.no_grad():
            for _ in range(args.rounds):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    best[name] = min(best[name], time.perf_counter() - start)
    base = best["generate's multinomial and sdpa"]
    print(f"{4 * args.prompts} rows, {args.max_new_tokens} steps, {torch.get_num_threads()} threads")
    for name, seconds in best.items():
        print(f"  {name:34s} {seconds / args.max_new_tokens:.3f} s/step  {base / seconds:.2f}x")


if __name__ == "__main__":
    main()
