"""HFSampler's answers/s with a static KV cache against the dynamic one, same model and prompts.

The toy experiment's policy shape (a 2-layer Llama, hidden 64, one token per character, here
with random weights so it needs no pretraining) answering its arithmetic prompts: ``--prompts``
prompts x ``--num-samples`` answers of ``--max-new-tokens`` tokens, in batches of
``--batch-size`` prompts. ``--rounds`` rounds alternate the two caches; each is scored by its
quickest round (these machines are noisy). Both draw the same answers from the same seed,
which the script checks.

    OMP_NUM_THREADS=2 python benchmarks/hf_cache.py      # about a minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "toy_nsa"))
from arithmetic import problems  # noqa: E402  (the toy experiment's scripts)
from pretrain import PROMPT, build_model, build_tokenizer  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    from nsa.plugins.samplers.hf_generate import HFSampler

    args = parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = build_tokenizer(Path(folder))
        build_model(tokenizer, hidden=64, layers=2).save_pretrained(folder)
        prompts = [
            tokenizer(PROMPT.format(question=p["question"]))["input_ids"] for p in problems(0, args.prompts, "x")
        ]
        sizes = {"num_samples": args.num_samples, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
        samplers = {
            name: HFSampler(**sizes, temperature=1.0, cache_implementation=name) for name in ("dynamic", "static")
        }
        best, answers = {name: float("inf") for name in samplers}, {}
        for _ in range(args.rounds):
            for name, sampler in samplers.items():
                start = time.perf_counter()
                answers[name] = [c.token_ids for group in sampler.sample(folder, prompts) for c in group]
                best[name] = min(best[name], time.perf_counter() - start)
    count = args.prompts * args.num_samples
    for name, seconds in best.items():
        print(f"{name:<8} {count / seconds:8.1f} answers/s  ({seconds:.1f} s for {count})")
    same = answers["static"] == answers["dynamic"]
    print(f"static / dynamic: {best['dynamic'] / best['static']:.2f}x; same answers: {same}")


if __name__ == "__main__":
    main()
