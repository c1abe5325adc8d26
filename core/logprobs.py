"""Per-token log-probabilities: the one forward used for training and for pi_ref.

At a 32k-token micro-batch and a 152k vocabulary, the float32 logits alone are 20 GB, and
log-softmax would copy them. The chunked path never holds them: the decoder's hidden states
go through the output layer ``chunk_tokens`` rows at a time, and each chunk's logits are
dropped at once and recomputed in the backward, so the output layer holds one (chunk, V)
float32 buffer at a time, whatever T.

The packed (padding-free) path runs the rows of a micro-batch as one sequence of their real
tokens, each row with its own position ids: transformers builds a block-diagonal causal mask
from position ids that restart at 0 (flash-attention uses them as varlen boundaries), so no
token attends to another row. ``packing_leaks`` checks that on the loaded policy.

Either way the result is laid out as the padded (B, T) batch: losses never see the packing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nsa.errors import NSAError

# config fields of models whose forward changes the logits after the output layer (Gemma 2's
# soft-capping, Cohere's and Granite's scales): the chunked path would skip that change
HEAD_MODIFIERS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
# attention implementations that run packed rows as variable-length sequences; sdpa and eager
# keep them apart with a dense (N, N) mask, scoring every pair of the micro-batch's tokens
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention")
# rows of the output layer's (rows, V) float32 logits at a time: about the hidden states' own
# size at a 152k vocabulary and hidden 5120 (Liger Kernel sizes its chunks alike)
DEFAULT_CHUNK = 1024


class PolicyScorer(torch.nn.Module):
    """The policy with its per-token log-probs as ``forward``. Under FSDP it is the root unit:
    its forward runs with the root's parameters gathered, the output layer's weight included,
    which the chunked path multiplies by outside the model's own forward."""

    def __init__(self, model: torch.nn.Module, chunk_tokens: int | None = DEFAULT_CHUNK) -> None:
        super().__init__()
        self.model, self.chunk_tokens = model, chunk_tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, packed: bool = False) -> torch.Tensor:
        return token_logprobs(self.model, input_ids, attention_mask, self.chunk_tokens, packed)  # (B, T)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    chunk_tokens: int | None = None,
    packed: bool = False,
) -> torch.Tensor:
    """log pi(input_ids[t] | input_ids[:t]) at each real position t; 0 at t = 0 and on padding.

    ``input_ids`` and ``attention_mask`` are (B, T), right-padded. ``chunk_tokens`` None runs
    the model's own forward and its full (B, T, V) logits; a number runs the chunked output
    layer. ``packed`` runs the rows without their padding (with chunk_tokens None, the output
    layer takes all N real tokens at once).

    Returns float32 (B, T) whatever the model's dtype: a bf16 log-softmax over a large
    vocabulary loses too much precision for importance ratios.
    """
    if chunk_tokens is None and not packed:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
        picked = gather_logprobs(logits[:, :-1], input_ids[:, 1:])  # (B, T-1)
        return F.pad(picked, (1, 0)) * attention_mask  # (B, T)
    real = attention_mask.flatten().nonzero().squeeze(1)  # (N,) flat indices of the real tokens
    positions = (attention_mask.cumsum(1) - 1).flatten()[real]  # (N,) position of each in its row
    hidden = _hidden_states(model, input_ids, attention_mask, real, positions, packed)  # (N, H)
    scored = (positions > 0).nonzero().squeeze(1)  # (M,) every real token but each row's first
    targets = input_ids.flatten()[real[scored]]  # (M,): the hidden state before a token predicts it
    head = model.get_output_embeddings()
    picked = chunked_logprobs(hidden[scored - 1], head, targets, chunk_tokens or max(1, len(scored)))
    out = torch.zeros(input_ids.numel(), dtype=torch.float32, device=input_ids.device)
    return out.index_put((real[scored],), picked).view_as(input_ids)  # (B, T)


def _hidden_states(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    real: torch.Tensor,
    positions: torch.Tensor,
    packed: bool,
) -> torch.Tensor:
    """The decoder's last hidden states (N, H) at the real tokens, in flat order."""
    decoder = model.get_decoder()
    if packed:  # one row of all real tokens; position ids restarting at 0 separate the rows
        ids = input_ids.flatten()[real].unsqueeze(0)  # (1, N)
        out = decoder(input_ids=ids, position_ids=positions.unsqueeze(0), attention_mask=None, use_cache=False)
        return out.last_hidden_state[0]  # (N, H)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state  # (B, T, H)
    return hidden.reshape(-1, hidden.shape[-1])[real]  # (N, H)


def chunked_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log softmax(head(hidden))[target] in float32, ``chunk`` rows of (chunk, V) logits at a time.

    hidden (M, H), targets (M,) -> (M,). The gradients w.r.t. the hidden states, the weight
    and the bias are those of the full path; see ChunkedLogprobs.
    """
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    return ChunkedLogprobs.apply(hidden, head.weight, head.bias, targets, chunk)


class ChunkedLogprobs(torch.autograd.Function):
    """The output layer and log-softmax of the chosen tokens, chunk by chunk, forward and backward.

    The forward keeps only the log-sum-exp of each row (M floats). The backward recomputes a
    chunk's logits into one float32 (chunk, V) buffer and turns it, in place, into the
    gradient of the log-probs w.r.t. the logits, g * (onehot(target) - softmax), then
    multiplies it back through the layer. So one (chunk, V) float32 buffer is all the output
    layer ever holds (a checkpointed chunk would hold three: logits, softmax, gradient).
    Under autocast the backward's matmuls run in the forward's autocast dtype, as autograd's would.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int):
        device = hidden.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        picked = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)  # (M,)
        lse = torch.empty_like(picked)  # (M,)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = F.linear(hidden[rows], weight, bias).float()  # (n, V): the model's dtype, then float32
            lse[rows] = torch.logsumexp(logits, dim=-1)
            picked[rows] = logits.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk = chunk
        return picked

    @staticmethod
    def backward(ctx, grad_picked):  # (M,)
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        device, dtype, enabled = ctx.autocast
        grad_hidden = torch.empty_like(hidden)  # (M, H)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)  # (V, H), summed over chunks in float32
        grad_bias = None if bias is None else torch.zeros_like(bias, dtype=torch.float32)
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            for start in range(0, hidden.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                grad_logits = _logit_grad(hidden[rows], weight, bias, targets[rows], lse[rows], grad_picked[rows])
                grad_hidden[rows] = grad_logits @ weight.to(grad_logits.dtype)  # (n, H)
                grad_weight += (grad_logits.T @ hidden[rows].to(grad_logits.dtype)).float()
                if grad_bias is not None:
                    grad_bias += grad_logits.float().sum(0)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight.to(weight.dtype), grad_bias, None, None


def _logit_grad(hidden, weight, bias, targets, lse, grad) -> torch.Tensor:
    """d(sum_i grad_i * logprob_i) / d logits for one chunk, (n, V), in the logits' dtype."""
    logits = F.linear(hidden, weight, bias)  # (n, V), the dtype the forward computed them in
    dtype = logits.dtype
    probs = logits.float().sub_(lse.unsqueeze(-1)).exp_()  # softmax; in place when logits were float32
    probs.mul_(-grad.unsqueeze(-1))  # -g * softmax
    probs.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1))  # + g at the target
    return probs.to(dtype)


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


def head_modifiers(model: torch.nn.Module) -> list[str]:
    """The config fields by which this model's logits differ from its output layer's product."""
    config = getattr(model, "config", None)
    return [name for name in HEAD_MODIFIERS if getattr(config, name, None) not in (None, 1.0)]


def check_chunkable(model: torch.nn.Module, option: str) -> None:
    """Refuses a model whose logits are more than its output layer's product (the chunked path
    would compute other log-probs than its forward)."""
    changed = head_modifiers(model)
    if changed or model.get_output_embeddings() is None:
        what = f"its config sets {', '.join(changed)}" if changed else "it has no output layer"
        name = type(model).__name__
        raise NSAError(f"{option}: the chunked log-prob path cannot score {name} ({what}); set it to null")


def check_chunk_size(chunk_tokens: int | str | None, tokens_per_micro_batch: int | None = None) -> None:
    """model.logprob_chunk_tokens: at least 1, and no larger than a micro-batch (``auto`` fits any)."""
    if chunk_tokens is None or chunk_tokens == "auto":
        return
    if chunk_tokens < 1:
        raise NSAError(f"model.logprob_chunk_tokens is {chunk_tokens}; it must be >= 1 (or null: the full logits)")
    if tokens_per_micro_batch is not None and chunk_tokens > tokens_per_micro_batch:
        raise NSAError(
            f"model.logprob_chunk_tokens is {chunk_tokens}, larger than data.tokens_per_micro_batch "
            f"({tokens_per_micro_batch}): a chunk is part of one micro-batch; set it at most {tokens_per_micro_batch}"
        )


def packing_leaks(scorer: torch.nn.Module, vocab_size: int) -> bool:
    """Whether packed rows see each other in this scorer's policy: row B after row A, and after
    row C (A's length, other tokens). If the attention keeps rows apart, B's log-probs are the
    same computation both times, equal to the bit; any attention across rows changes them.
    Every process must call it (under FSDP the forward is a collective)."""
    device, top = next(scorer.parameters()).device, min(50, vocab_size)  # a toy policy may know 30 tokens
    first, other, second = (torch.arange(1, 9, device=device) * step % top for step in (3, 7, 11))  # (8,) ids < top
    mask = torch.ones(2, 8, dtype=torch.long, device=device)
    with torch.no_grad():
        after_first = scorer(torch.stack([first, second]), mask, packed=True)[1]  # (8,)
        after_other = scorer(torch.stack([other, second]), mask, packed=True)[1]
    return not torch.equal(after_first, after_other)
