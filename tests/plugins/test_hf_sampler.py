"""HFSampler on a tiny real Llama: shapes, EOS handling, seeding, sampling log-probs, and cache identity."""

from __future__ import annotations

import inspect

import pytest
import torch

from nsa.contracts import Completion, Sampler
from nsa.models import load_policy, load_tokenizer
from nsa.plugins.samplers.hf_generate import HFSampler, _Draw, _trim
from tests.tiny import make_eager_eos

MAX_NEW = 10
TEXTS = ["12 * 7 = 84", "The answer is", "Step", "84 - 15"]


@pytest.fixture(scope="module")
def eager_eos_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model, made to stop often: EOS in about 15% of steps.

    A random tiny Llama gives EOS about 1/400 per token, so no completion would ever stop.
    Adding a unit vector u to every embedding makes the last hidden state point mostly along
    u (|h| ~ 8 after RMSNorm); an EOS row of 0.375 u then gives EOS a logit of about 3 while
    the others stay near 0: exp(3 / 0.7) / (exp(3 / 0.7) + 399) ~ 0.15 at temperature 0.7.
    """
    return make_eager_eos(tiny_model, tmp_path_factory.mktemp("eager-eos"), eos_scale=0.375)


@pytest.fixture(scope="module")
def prompts(tiny_model) -> list[list[int]]:
    tokenizer = load_tokenizer(tiny_model)
    return [tokenizer(t)["input_ids"] for t in TEXTS]  # ragged: 11, 9, 4, 5 tokens


def sampler(**kwargs) -> HFSampler:
    config = {"num_samples": 6, "max_new_tokens": MAX_NEW, "batch_size": 3, "seed": 0} | kwargs
    return HFSampler(**config)


@pytest.fixture(scope="module")
def drawn(eager_eos_model, prompts) -> list[list[Completion]]:
    return sampler().sample(eager_eos_model, prompts)


def test_is_a_sampler() -> None:
    assert isinstance(HFSampler(), Sampler)


def test_num_samples_per_prompt(drawn, prompts) -> None:
    """4 prompts in batches of 3 (3 + 1, the second left-padded differently): 6 Completions
    each, one log-prob (a float, at most 0) per token id (an int)."""
    assert len(drawn) == len(prompts)
    assert all(len(per_prompt) == 6 for per_prompt in drawn)
    for c in (c for per_prompt in drawn for c in per_prompt):
        assert isinstance(c, Completion) and type(c.token_ids) is list and type(c.logprobs) is list
        assert len(c.logprobs) == len(c.token_ids)
        assert all(type(t) is int for t in c.token_ids)
        assert all(type(x) is float and x <= 0.0 for x in c.logprobs)


def test_completions_end_with_eos_or_run_to_the_limit(drawn, tiny_model) -> None:
    """EOS (= pad, id 0) is kept and only at the end; without it, max_new_tokens tokens."""
    eos = load_tokenizer(tiny_model).eos_token_id
    completions = [c.token_ids for per_prompt in drawn for c in per_prompt]
    for c in completions:
        assert 1 <= len(c) <= MAX_NEW
        assert eos not in c[:-1], c  # no padding (nor a second EOS) inside
        assert c[-1] == eos or len(c) == MAX_NEW, c
    # both branches really occur with this model and seed
    assert any(c[-1] == eos and len(c) < MAX_NEW for c in completions)
    assert any(c[-1] != eos for c in completions)


def test_logprobs_are_the_sampling_distribution(drawn, eager_eos_model, prompts) -> None:
    """Golden check of the stored log-probs against a fresh, unpadded transformers forward.

    With top_k=0 and top_p=1, generate's only logits processor is the temperature warper, so
    the processed score at step t is logits_t / T and the token is drawn from
    softmax(logits_t / T). The log-probability of the drawn y_t is therefore
    log_softmax(logits_t / T)[y_t], where logits_t is the model's output at position
    len(prompt) + t - 1 of prompt + completion (the position that predicts y_t). The forward
    here is unpadded, while generate ran left-padded batches of 3: equal to within fp32
    rounding, EOS included.
    """
    model = load_policy(eager_eos_model).eval()
    temperature = sampler().temperature
    for prompt, per_prompt in zip(prompts, drawn, strict=True):
        for c in per_prompt:
            ids = torch.tensor([prompt + c.token_ids])  # (1, P + N)
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt) - 1 : -1]  # (N, V): row t predicts token t
            expected = (logits / temperature).log_softmax(-1).gather(-1, ids[0, len(prompt) :, None])[:, 0]
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-5, rtol=0)


def test_logprobs_follow_top_p(eager_eos_model, prompts) -> None:
    """With top_p = 0.8 a token is drawn from softmax(logits / T) renormalised over the
    nucleus (transformers' TopPLogitsWarper on logits / T, the rest at -inf): the stored
    log-prob is that distribution's. It is >= the plain tempered log-prob (the nucleus mass
    is <= 1), strictly for some tokens; tokens outside the nucleus are never drawn."""
    from transformers import TopPLogitsWarper

    drawn = sampler(top_p=0.8, num_samples=2).sample(eager_eos_model, prompts)
    model, temperature = load_policy(eager_eos_model).eval(), sampler().temperature
    gaps = []
    for prompt, per_prompt in zip(prompts, drawn, strict=True):
        for c in per_prompt:
            ids = torch.tensor([prompt + c.token_ids])  # (1, P + N)
            with torch.no_grad():
                tempered = model(ids).logits[0, len(prompt) - 1 : -1] / temperature  # (N, V)
            nucleus = TopPLogitsWarper(0.8)(ids, tempered)  # (N, V), -inf outside
            expected = nucleus.log_softmax(-1).gather(-1, ids[0, len(prompt) :, None])[:, 0]
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-5, rtol=0)
            plain = tempered.log_softmax(-1).gather(-1, ids[0, len(prompt) :, None])[:, 0]
            gaps.append((expected - plain).max().item())
    assert max(gaps) > 1e-3


def test_same_seed_same_draws(drawn, eager_eos_model, prompts) -> None:
    """A fresh sampler (and a second call on one sampler) redraws the same completions."""
    again = sampler()
    assert again.sample(eager_eos_model, prompts) == drawn
    assert again.sample(eager_eos_model, prompts) == drawn


def test_other_seed_other_draws(drawn, eager_eos_model, prompts) -> None:
    assert sampler(seed=1).sample(eager_eos_model, prompts) != drawn


@pytest.mark.parametrize("device", ["gpu", "cuda0", ""])
def test_a_device_that_does_not_exist_is_one_line(device) -> None:
    from nsa.errors import NSAError

    with pytest.raises(NSAError, match=f"HFSampler: device '{device}' is not one of auto, cpu, cuda"):
        HFSampler(device=device)


def test_public_attributes_are_the_config() -> None:
    """The cache identity: exactly the __init__ arguments, with the values given, but the
    device (where it runs, as for the PRM judge)."""
    config = {
        "num_samples": 3,
        "temperature": 0.9,
        "top_p": 0.95,
        "max_new_tokens": 17,
        "batch_size": 2,
        "seed": 5,
        "dtype": "bfloat16",
        "cache_implementation": "dynamic",
    }
    assert set(config) | {"device"} == set(inspect.signature(HFSampler).parameters)
    public = {k: v for k, v in vars(HFSampler(**config, device="cpu")).items() if not k.startswith("_")}
    assert public == config
    defaults = {k: p.default for k, p in inspect.signature(HFSampler).parameters.items() if k != "device"}
    assert {k: v for k, v in vars(HFSampler()).items() if not k.startswith("_")} == defaults


def test_loaded_model_stays_private(eager_eos_model, prompts) -> None:
    """Sampling loads a model, but the public attributes (the fingerprint) do not change."""
    s = sampler(num_samples=1, max_new_tokens=2)
    before = {k: v for k, v in vars(s).items() if not k.startswith("_")}
    s.sample(eager_eos_model, prompts[:1])
    assert {k: v for k, v in vars(s).items() if not k.startswith("_")} == before


@pytest.mark.parametrize(
    ("ids", "eos", "pad", "expected"),
    [
        ([5, 6, 2, 0, 0], 2, 0, [5, 6, 2]),  # cut after the first EOS, EOS kept
        ([5, 2, 7, 2], 2, 0, [5, 2]),
        ([5, 6, 0, 0], 2, 0, [5, 6]),  # no EOS: trailing padding dropped
        ([5, 6, 7], 2, 0, [5, 6, 7]),
        ([0, 0, 0], 0, 0, [0]),  # eos == pad: the first is the EOS
        ([], 2, 0, []),
    ],
)
def test_trim(ids, eos, pad, expected) -> None:
    assert _trim(list(ids), eos, pad) == expected


def test_the_static_cache_draws_the_same_answers_as_the_dynamic_one(drawn, eager_eos_model, prompts) -> None:
    """The static cache (the default) only preallocates where the dynamic one concatenates:
    the same seed draws the same tokens with the same log-probs (to float rounding)."""
    dynamic = sampler(cache_implementation="dynamic").sample(eager_eos_model, prompts)
    pairs = [(a, b) for x, y in zip(drawn, dynamic) for a, b in zip(x, y)]
    assert [a.token_ids for a, _ in pairs] == [b.token_ids for _, b in pairs]
    assert torch.allclose(
        torch.tensor([x for a, _ in pairs for x in a.logprobs]),
        torch.tensor([x for _, b in pairs for x in b.logprobs]),
        atol=1e-5,
    )


def test_an_unknown_cache_is_refused_by_name() -> None:
    from nsa.errors import NSAError

    with pytest.raises(NSAError, match="cache_implementation 'sliding' is not static or dynamic"):
        HFSampler(cache_implementation="sliding")


def test_the_draw_follows_the_distribution_and_leaves_one_token() -> None:
    """20000 rows of one distribution p = (0.5, 0.3, 0.2, 0), given as scores log p + 7 (a shift the
    softmax removes): each token's share is within 0.0175 of p (5 standard errors, at most
    sqrt(0.25 / 20000) = 0.0035), the token of probability 0 is never drawn, each row's returned
    scores are -inf but at the drawn token, and the kept log-prob is log p of that token."""
    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    draw = _Draw()
    scores = draw(torch.zeros(20000, 1, dtype=torch.long), p.log().expand(20000, 4) + 7.0)  # (20000, 4)
    assert torch.isfinite(scores).sum(-1).eq(1).all()
    token = scores.argmax(-1)  # (20000,)
    share = torch.bincount(token, minlength=4).float() / 20000
    assert share[3] == 0
    torch.testing.assert_close(share, p, atol=0.0175, rtol=0)
    torch.testing.assert_close(draw.finish(token[:, None]), p.log()[token][:, None])


def test_the_cpu_attention_shares_key_value_heads_with_the_same_logits(tmp_path) -> None:
    """A tiny Llama with 4 query heads on 2 key/value heads, a left-padded batch (so a mask, where
    transformers' sdpa copies the cache per query head): gqa_sdpa gives the same logits at every
    position of prefill and of 3 cached decode steps, to fp32 rounding; HFSampler's model runs it."""
    from nsa.plugins.samplers.gqa_attention import NAME, use_on_cpu
    from tests.tiny import build_model

    folder = build_model(tmp_path / "gqa", num_attention_heads=4, num_key_value_heads=2)
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])  # (2, 5), row 0 left-padded
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=3,
                min_new_tokens=3,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )
        return torch.stack(out.logits, 1)  # (2, 3, V)

    model = load_policy(str(folder)).eval()
    assert model.config._attn_implementation == "sdpa"
    expected = logits(model)
    use_on_cpu(model)
    assert model.config._attn_implementation == NAME
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=0)
    loaded, _ = HFSampler()._load(str(folder))
    assert loaded.config._attn_implementation == NAME
