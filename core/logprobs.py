"""Per-token log-probabilities: the one forward used for training and for pi_ref."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log pi(input_ids[t] | input_ids[:t]) at each position t; 0 at t = 0.

    Returns float32 (B, T) whatever the model's dtype: a bf16 log-softmax over a large
    vocabulary loses too much precision for importance ratios.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    picked = gather_logprobs(logits[:, :-1], input_ids[:, 1:])  # (B, T-1)
    return F.pad(picked, (1, 0))  # (B, T)


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in float32, one row at a time.

    logits (B, T, V), targets (B, T) -> (B, T). Row by row, the forward never holds a
    second full B*T*V float32 copy at once; autograd still saves each row's float32 logits
    for the backward, so training memory is bounded only by the micro-batch token budget.
    """
    rows = []
    for row_logits, row_targets in zip(logits, targets):  # (T, V), (T,)
        row = row_logits.float()
        picked = row.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)  # (T,)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)
