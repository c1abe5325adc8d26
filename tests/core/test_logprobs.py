"""The chunked output layer and the padding-free forward equal the full-logits path.

Every comparison is against ``token_logprobs(..., chunk_tokens=None)``, the model's own
forward and its full (B, T, V) logits, which is what nsa computed before chunking.
"""

from __future__ import annotations

import pytest
import torch

from nsa.errors import NSAError
from nsa.logprobs import (
    PolicyScorer,
    check_chunk_size,
    check_chunkable,
    chunked_logprobs,
    packing_leaks,
    token_logprobs,
)
from nsa.models import load_policy
from tests.tiny import build_model


def full_head_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()  # (M, V)
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)  # (M,)


@pytest.mark.parametrize("chunk", [1, 4, 7, 13, 64])  # 13 rows: 4 and 7 do not divide it, 64 is one chunk
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_head_equals_full_logits_with_gradients(chunk, bias):
    """Values and gradients w.r.t. the hidden states, the weight and the bias, to 1e-5 in float32."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    hidden = torch.randn(13, 16, requires_grad=True)
    targets = torch.randint(0, 50, (13,))
    upstream = torch.randn(13)  # any loss: a weighted sum of the log-probs
    results = []
    for score in (full_head_logprobs, lambda *args: chunked_logprobs(*args, chunk)):
        head.zero_grad()
        hidden.grad = None
        values = score(hidden, head, targets)
        (values * upstream).sum().backward()
        params = [hidden.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else [])
        results.append((values.detach(), params))
    (full, full_grads), (chunked, chunked_grads) = results
    assert chunked.dtype == torch.float32 and chunked.shape == (13,)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
    for got, want in zip(chunked_grads, full_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory) -> str:
    return str(build_model(tmp_path_factory.mktemp("tied"), tie_word_embeddings=True))


def ragged_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """4 right-padded rows of 13, 9, 13 and 4 real tokens: 35 scored (each row's first is not)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 300, (4, 13), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[1, 9:] = mask[3, 4:] = 0
    return input_ids * mask, mask


def scores_and_grads(model, chunk, packed):
    model.zero_grad()
    input_ids, mask = ragged_batch()
    logprobs = token_logprobs(model, input_ids, mask, chunk, packed)  # (B, T)
    upstream = torch.linspace(-1, 1, logprobs.numel()).view_as(logprobs)
    (logprobs * upstream).sum().backward()
    return logprobs.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(("chunk", "packed"), [(6, False), (6, True), (64, True), (None, True)])
def test_policy_logprobs_and_gradients_equal_the_full_path(tiny_model, tied_model, tied, chunk, packed):
    """Chunked (6 does not divide the 35 scored tokens) and padding-free forwards equal the
    model's own forward row by row, and so do the gradients of every parameter; with tied
    embeddings the output layer's gradient adds to the embeddings' one, as in the full path."""
    model = load_policy(tied_model if tied else tiny_model)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    want, want_grads = scores_and_grads(model, None, False)
    got, got_grads = scores_and_grads(model, chunk, packed)
    _, mask = ragged_batch()
    assert torch.equal(got == 0, (mask == 0) | (torch.arange(13) == 0))  # 0 at each row's first token and padding
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=0, msg=name)


def leaky_attention(module, query, key, value, attention_mask, **kwargs):
    """An attention that ignores its mask (causal over the whole row), as custom attention code
    written for padded batches would: packed rows then attend to each other."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)


def test_the_probe_tells_an_attention_that_keeps_packed_rows_apart(tiny_model):
    """transformers' sdpa and eager attention separate rows whose position ids restart; an
    attention that ignores the mask does not, and the probe says so."""
    from transformers import AttentionInterface

    AttentionInterface.register("leaky", leaky_attention)
    verdicts = {}
    for implementation in ("sdpa", "eager", "leaky"):
        model = load_policy(tiny_model)
        model.set_attn_implementation(implementation)
        verdicts[implementation] = packing_leaks(PolicyScorer(model, 4), model.config.vocab_size)
    assert verdicts == {"sdpa": False, "eager": False, "leaky": True}


def test_the_probe_fits_a_policy_of_a_few_tokens():
    """The probe's token ids stay inside the vocabulary: a policy of 12 tokens (the toy
    experiment's knows 31) is probed, not crashed with an embedding index error."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=12, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    assert packing_leaks(PolicyScorer(LlamaForCausalLM(config), 4), 12) is False


def test_chunk_size_and_unchunkable_models_are_refused(tmp_path):
    for bad, words in ((0, ">= 1"), (-3, ">= 1"), (9000, "larger than data.tokens_per_micro_batch (8192)")):
        with pytest.raises(NSAError, match="model.logprob_chunk_tokens is") as err:
            check_chunk_size(bad, 8192)
        assert words in str(err.value)
    check_chunk_size("auto", 16)  # 1024 rows, or the whole micro-batch when smaller
    check_chunk_size(8192, 8192)
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, final_logit_softcapping=30.0,
    )  # fmt: skip
    with pytest.raises(NSAError, match="cannot score Gemma2ForCausalLM .its config sets final_logit_softcapping."):
        check_chunkable(Gemma2ForCausalLM(config), "model.logprob_chunk_tokens")


def test_a_policy_that_mixes_packed_rows_trains_padded_and_refuses_a_packed_batch(tiny_model, capsys):
    """The probe before the first step decides how micro-batches run: auto (null) packs only
    with a variable-length attention, else pads with a notice; true packs with sdpa's dense
    mask too, and is refused on a policy whose attention mixes packed rows; a packed
    micro-batch that reaches such a policy anyway is refused before its forward."""
    from types import SimpleNamespace

    from transformers import AttentionInterface

    from nsa.batching import Slot, collate
    from nsa.data import NSADataModule
    from nsa.module import NSAModule
    from nsa.plugins.losses.bcpg import BCPG

    def packs(padding_free):
        trainer = SimpleNamespace(lightning_module=module, is_global_zero=True)
        return NSADataModule._packs_rows(SimpleNamespace(padding_free=padding_free, _noticed=False, trainer=trainer))

    AttentionInterface.register("leaky", leaky_attention)
    module = NSAModule(policy=tiny_model, loss=BCPG())
    module.configure_model()
    module.on_fit_start()
    assert module.cannot_pack is None and module.attention == "sdpa"  # sdpa keeps packed rows apart
    assert [packs(None), packs(True), packs(False)] == [False, True, False]
    module.attention = "flex_attention"  # what the data module is told; a varlen kernel packs in auto
    assert packs(None) is True
    module.policy.model.set_attn_implementation("leaky")
    module.on_fit_start()
    assert module.cannot_pack == "its attention (leaky) lets packed rows attend to each other"
    assert packs(None) is False
    with pytest.raises(NSAError, match=r"data.padding_free is true, and its attention \(leaky\) lets packed rows"):
        packs(True)
    notices = [line for line in capsys.readouterr().err.splitlines() if "data.padding_free" in line]
    assert notices == [
        "nsa: notice: data.padding_free: sdpa would score all pairs of a packed micro-batch's tokens; training on "
        "padded micro-batches sorted by length (flash_attention_2 or flex_attention in model.attn_implementation "
        "run them packed)",
        "nsa: notice: data.padding_free: its attention (leaky) lets packed rows attend to each other; training on "
        "padded micro-batches sorted by length (flash_attention_2 or flex_attention in model.attn_implementation "
        "run them packed)",
    ]
    row = {"prompt_ids": [5, 6], "response_ids": [7, 8], "nsa_mask": [0, 0], "reward": 1.0, "reward_mean": 0.5,
           "reward_std": 0.5, "ref_logprobs": [-1.0, -1.0], "group": "q"}  # fmt: skip
    batch = collate([(row, Slot(0, 1, 1, True))], pad_id=0, packed=True)
    with pytest.raises(NSAError, match="data.padding_free: a packed micro-batch came, and its attention .leaky."):
        module.training_step(batch, 0)
