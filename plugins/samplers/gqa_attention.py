"""SDPA attention that shares each key/value head among its query heads on a CPU, mask or not.

For a model with fewer key/value heads than query heads (SmolLM2: 3 for 9), transformers' "sdpa"
copies every layer's whole key/value cache H / H_kv times at every step whenever the batch has an
attention mask, as a left-padded batch of prompts always does; torch's SDPA takes the smaller
heads itself (``enable_gqa``). On a CPU that is the same logits (bit for bit on SmolLM2) at 1.5x
the decode steps a second (benchmarks/hf_draw.py). transformers keeps the copy where a mask sends
CUDA's SDPA to its math kernel, so only CPU models use this.
"""

from __future__ import annotations

import torch

NAME = "nsa_cpu_gqa_sdpa"


def gqa_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """query (B, H, q, d), key and value (B, H_kv, k, d), mask (B, 1, q, k) or None -> (B, q, H, d)."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = query.shape[2] > 1 and attention_mask is None and causal  # as transformers decides it
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )  # (B, H, q, d)
    return out.transpose(1, 2).contiguous(), None


def use_on_cpu(model) -> None:
    """Switch a CPU model that runs transformers' "sdpa" to ``gqa_sdpa`` (its masks stay sdpa's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.device.type != "cpu" or model.config._attn_implementation != "sdpa":
        return
    AttentionInterface.register(NAME, gqa_sdpa)  # transformers' table of attention functions, by name
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
