"""Tokens/s and MFU of nsa's BCPG-NSA training step on one GPU (H100/H200).

A randomly initialised Qwen2.5-1.5B-architecture model in bf16 and 4k-token sequences
(throughput needs no trained weights). In one run, on the same model, data and tokens:

  plain        a plain PyTorch loop: HF forward with labels, backward, AdamW step
  nsa-full     nsa's forward with the full (B, T, V) logits (logprob_chunk_tokens null) +
               the BCPG-NSA loss plugin (beta 0.5), backward, step: nsa before chunking
  nsa-rft      nsa's forward, chunked output layer (1024 rows) + the RFT loss plugin
  nsa-bcpg     nsa's forward, chunked + BCPG-NSA
  nsa-packed   chunked + BCPG-NSA, the rows packed into one sequence without padding
               (``--attn``: flex_attention by default on a GPU, varlen; sdpa: a dense mask)
  nsa-packed-2x  the same on twice the rows: the larger micro-batch the memory now allows
  lightning    NSAModule in a Lightning Trainer (its defaults: chunked, packed), FSDP on one
               GPU, bf16-true

Ratios are against ``plain`` from the same run (``nsa-packed-2x`` per token, on its own
tokens). Needs no network and no datasets/mlflow.
    python benchmarks/gpu/step_throughput.py            # on the GPU machine
    python benchmarks/gpu/step_throughput.py --tiny     # a CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak, SXM


def import_nsa() -> None:
    """Without an install, map the packages as pyproject.toml does (nsa -> core/)."""
    if importlib.util.find_spec("nsa") is not None:
        return
    for name, folder in (("nsa", ROOT / "core"), ("nsa.plugins", ROOT / "plugins")):
        init = folder / "__init__.py"
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def qwen_config(tiny: bool):
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=8192,
        )
    return Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )


def make_batch(config, rows: int, length: int, device: str):
    """Prompts of 256 tokens, answers of the rest; half the rows wrong with a mined step."""
    from nsa.contracts import PolicyBatch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (rows, length), generator=g)  # (B, T)
    response = torch.zeros(rows, length, dtype=torch.bool)
    response[:, 256:] = True
    nsa_mask = torch.zeros_like(response)
    nsa_mask[1::2, 256 : 256 + length // 4] = True
    reward = torch.tensor([1.0, 0.0] * (rows // 2))
    batch = PolicyBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        response_mask=response,
        nsa_mask=nsa_mask,
        reward=reward,
        reward_mean=torch.full((rows,), 0.5),
        reward_std=torch.full((rows,), 0.5),
        ref_token_logprobs=torch.full((rows, length), -11.9),
        step_responses=float(rows),
        step_positives=float(rows // 2),
        last_in_step=True,
        question_ids=[f"q{i}" for i in range(rows)],
        partner=torch.full((rows,), -1),
    )
    return batch if device == "cpu" else _to(batch, device)


def _to(batch, device: str):
    from dataclasses import fields, replace

    values = {f.name: getattr(batch, f.name) for f in fields(batch)}
    moved = {name: value.to(device) for name, value in values.items() if torch.is_tensor(value)}
    return replace(batch, **moved)


def timed(step, warmup: int, steps: int, device: str) -> tuple[float, float]:
    """Seconds per step and peak memory (GiB) over ``steps`` after ``warmup``."""
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return (time.perf_counter() - start) / steps, peak


def eager_steps(model, batch, big_batch, optimizer):
    from nsa.logprobs import token_logprobs
    from nsa.plugins.losses.bcpg import BCPG
    from nsa.plugins.losses.rft import RFT

    bcpg = BCPG(beta=0.5, tau=1e-3)

    def plain():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def with_loss(loss, chunk=1024, packed=False, batch=batch):
        def step():
            logprobs = token_logprobs(model, batch.input_ids, batch.attention_mask, chunk, packed)  # (B, T)
            loss(batch, logprobs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    return {
        "plain": plain,
        "nsa-full": with_loss(bcpg, chunk=None),
        "nsa-rft": with_loss(RFT()),
        "nsa-bcpg": with_loss(bcpg),
        "nsa-packed": with_loss(bcpg, packed=True),
        "nsa-packed-2x": with_loss(bcpg, packed=True, batch=big_batch),
    }


def lightning_step_time(folder: str, batch, warmup: int, steps: int, device: str, attn: str) -> tuple[float, float]:
    """NSAModule under a Trainer: FSDP on one GPU (single device on the CPU smoke test).

    It also exports the trained policy (a full state dict gathered from the FSDP shards) and
    checks that the export reloads with every tensor finite and differs from the start.
    """
    from dataclasses import replace

    import lightning as L

    from nsa.module import NSAModule
    from nsa.plugins.losses.bcpg import BCPG

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == warmup:
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                self.start = time.perf_counter()

        def on_train_end(self, trainer, *args):
            if device == "cuda":
                torch.cuda.synchronize()
            self.seconds = (time.perf_counter() - self.start) / steps

    cpu_batch = replace(_to(batch, "cpu"), packed=True)  # NSAModule's probe decides whether it may run packed
    loader = torch.utils.data.DataLoader([cpu_batch] * (warmup + steps), batch_size=None, collate_fn=lambda b: b)
    export = Path(folder) / "trained"
    module = NSAModule(
        folder, BCPG(beta=0.5, tau=1e-3), max_grad_norm=1.0, export_dir=str(export), attn_implementation=attn
    )
    timer = Timer()
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        strategy="fsdp" if device == "cuda" else "auto",
        precision="bf16-true",
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    check_export(folder, export)
    return timer.seconds, peak


def check_export(start_folder: str, export: Path) -> None:
    from safetensors.torch import load_file

    start = {k: v for f in Path(start_folder).glob("*.safetensors") for k, v in load_file(f).items()}
    trained = {k: v for f in export.glob("*.safetensors") for k, v in load_file(f).items()}
    # a gathered FSDP state dict also names tied weights (lm_head = embeddings) that save_pretrained drops
    assert set(start) <= set(trained), sorted(set(start) - set(trained))[:5]
    assert all(torch.isfinite(v.float()).all() for v in trained.values())
    changed = sum(not torch.equal(trained[k].float(), start[k].float()) for k in start)
    extra = sorted(set(trained) - set(start))
    print(f"export: {len(start)} tensors, all finite, {changed} changed by training; extra {extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: checks the script runs")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--attn", default=None, help="attention of the packed runs (default: flex_attention on a GPU)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    import_nsa()
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    length = 512 if args.tiny else args.length
    config = qwen_config(args.tiny)
    torch.manual_seed(0)
    attn = args.attn or ("flex_attention" if device == "cuda" else "sdpa")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
    model = model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    batch = make_batch(config, args.rows, length, device)
    big_batch = make_batch(config, 2 * args.rows, length, device)
    tokens = args.rows * length
    # 6 N flops per token for the dense layers, plus attention's 12 L d T (causal: half of it counted)
    flops_per_token = 6 * params + 6 * config.num_hidden_layers * config.hidden_size * length
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)

    results = {"gpu": gpu, "params": params, "tokens_per_step": tokens, "runs": {}}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, foreach=True)
    for name, step in eager_steps(model, batch, big_batch, optimizer).items():
        try:
            seconds, memory = timed(step, 2, args.steps, device)
        except torch.OutOfMemoryError:
            print(f"{name}: out of memory", flush=True)
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        step_tokens = 2 * tokens if name.endswith("-2x") else tokens
        seconds = seconds * tokens / step_tokens  # per `tokens` tokens, comparable with the others
        results["runs"][name] = {"s_per_step": seconds, "peak_gib": memory}
        print(f"{name}: {seconds:.3f} s/step, {tokens / seconds:.0f} tokens/s, peak {memory:.1f} GiB", flush=True)
    del optimizer
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        seconds, memory = lightning_step_time(folder, batch, 2, args.steps, device, attn)
        results["runs"]["lightning"] = {"s_per_step": seconds, "peak_gib": memory}
    report(results, tokens, flops_per_token, peak, args.out)


def report(results: dict, tokens: int, flops_per_token: float, peak: float | None, out: str | None) -> None:
    base = results["runs"]["plain"]["s_per_step"]
    print(f"{results['gpu']}: {results['params'] / 1e9:.2f}B params, {tokens} tokens a step")
    print(f"{'run':<14} {'s/step':>8} {'tokens/s':>10} {'MFU':>6} {'vs plain':>9} {'peak GiB':>9}")
    for name, run in results["runs"].items():
        run["tokens_per_s"] = tokens / run["s_per_step"]
        run["mfu"] = run["tokens_per_s"] * flops_per_token / peak if peak else None
        run["speed_vs_plain"] = base / run["s_per_step"]
        mfu = f"{run['mfu']:.1%}" if run["mfu"] else "-"
        print(
            f"{name:<14} {run['s_per_step']:>8.3f} {run['tokens_per_s']:>10.0f} {mfu:>6} "
            f"{run['speed_vs_plain']:>8.2f}x {run['peak_gib']:>9.1f}"
        )
    if out:
        Path(out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
