"""Peak memory and tokens/s of the per-token log-probs' forward + backward: full logits vs chunked.

At a real vocabulary the output layer dominates the log-prob memory: 8k tokens x 152k
vocabulary is 5 GB of float32 logits, and their gradient as much again. A one-layer Llama
with a tiny hidden size (64) and Qwen2.5's vocabulary (152064) keeps the rest CPU-sized, so
the figures are the output layer's:

  full     token_logprobs(chunk_tokens=None): the model's own forward, its (B, T, V) logits,
           log-softmax row by row (what nsa did before chunking)
  chunked  token_logprobs(chunk_tokens=C): the decoder's hidden states, the output layer C rows
           at a time, each chunk's logits recomputed in the backward

Each method runs in its own fresh process (its peak is its own): the same random model
(seeded), the same token ids, ``--repeats`` forward + backward passes of the sum of the
log-probs after one untimed warm-up. Peak memory is the growth of the process's peak RSS
(VmHWM, reset after the warm-up) over its RSS then; on a GPU, the peak allocated bytes.
Tokens/s takes the quickest repeat. Ratios are against full, from the same run.

    OMP_NUM_THREADS=2 python benchmarks/logprob_memory.py                    # about 6 minutes on 2 cores
    OMP_NUM_THREADS=2 python benchmarks/logprob_memory.py --chunks 512 1024 4096 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build(vocab: int, hidden: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=65536, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def measure(method: str, chunk: int | None, args: argparse.Namespace, out) -> None:
    """One method in this fresh process: peak memory growth and the quickest repeat."""
    import torch

    from nsa.logprobs import token_logprobs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(args.vocab, args.hidden, args.seed).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, args.vocab, (args.rows, args.tokens // args.rows), generator=generator).to(device)
    mask = torch.ones_like(ids)

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        logprobs = token_logprobs(model, ids, mask, chunk)  # (B, T) float32
        logprobs.sum().backward()
        return logprobs.detach()

    first = step()  # warm-up, not timed; its gradients freed by the next zero_grad
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = rss_kib("VmRSS") * 1024
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else rss_kib("VmHWM") * 1024
    out.send({"method": method, "chunk": chunk, "peak_bytes": peak - base, "seconds": min(times),
              "checksum": float(first.sum())})  # fmt: skip


def run(method: str, chunk: int | None, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    worker = context.Process(target=measure, args=(method, chunk, args, send))
    worker.start()
    result = receive.recv()
    worker.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per forward (rows x length)")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=152064, help="Qwen2.5's vocabulary")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024], help="chunk sizes to measure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = [run("full", None, args)] + [run("chunked", chunk, args) for chunk in args.chunks]
    full = results[0]
    print(f"{args.tokens} tokens ({args.rows} rows), vocabulary {args.vocab}, hidden {args.hidden}")
    print(f"{'method':<16}{'peak MiB':>10}{'x less':>9}{'tokens/s':>11}{'x full':>8}{'checksum':>16}")
    for r in results:
        name = r["method"] if r["chunk"] is None else f"chunked {r['chunk']}"
        less, speed = full["peak_bytes"] / r["peak_bytes"], full["seconds"] / r["seconds"]
        print(
            f"{name:<16}{r['peak_bytes'] / 2**20:>10.0f}{less:>9.1f}{args.tokens / r['seconds']:>11.0f}"
            f"{speed:>8.2f}{r['checksum']:>16.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))


if __name__ == "__main__":
    main()
