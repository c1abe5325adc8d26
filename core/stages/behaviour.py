"""Stage 3a: behaviour log-probs log pi_ref, computed once with the training forward.

Training never holds a reference model: it reads these. They come from the same
``token_logprobs`` code and dtype as the training step, so the first step's importance
ratio is 1 up to float noise. The output layer runs chunk by chunk (``DEFAULT_CHUNK`` rows):
a 14B policy's full logits at 8 rows of 32k tokens would be 155 GB of float32.
"""

from __future__ import annotations

import torch
from datasets import Dataset

from nsa.batching import pad_right
from nsa.logprobs import DEFAULT_CHUNK, head_modifiers, token_logprobs

# trainer precision -> (dtype the weights are loaded in, autocast dtype or None).
# 16-mixed is left out: its loss scaling would need unscaling before nsa clips gradients.
PRECISIONS = {
    "32-true": ("float32", None),
    "bf16-mixed": ("float32", torch.bfloat16),
    "bf16-true": ("bfloat16", None),
}


def behaviour_shard(rollouts: Dataset, model: torch.nn.Module, pad_id: int, batch_size: int) -> Dataset:
    """Per-token log pi_ref of each response token (prompt tokens excluded)."""
    out: list[list[float]] = []
    device = next(model.parameters()).device
    chunk = None if head_modifiers(model) else DEFAULT_CHUNK  # a soft-capped head needs the model's own forward
    for start in range(0, len(rollouts), batch_size):
        rows = rollouts[start : start + batch_size]
        seqs = [p + r for p, r in zip(rows["prompt_ids"], rows["response_ids"])]
        input_ids = pad_right(seqs, pad_id).to(device)  # (B, T)
        mask = pad_right([[1] * len(s) for s in seqs], 0).to(device)  # (B, T)
        with torch.no_grad():
            logprobs = token_logprobs(model, input_ids, mask, chunk).cpu()  # (B, T)
        for row, p, r in zip(logprobs, rows["prompt_ids"], rows["response_ids"]):
            out.append(row[len(p) : len(p) + len(r)].tolist())
    return rollouts.add_column("ref_logprobs", out)
