"""Sampling with Hugging Face ``generate``: the fallback sampler, good for small models.

Keeps the generated token ids as they came (EOS included, padding removed) and the
log-probability of each under the distribution it was drawn from (after temperature and
top_p, drawn and read by a logits processor that runs last). Seeding is per call and derived from the prompts, so
a resumed stage redraws the same answers.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch

from nsa.contracts import Completion, PromptRoom
from nsa.errors import NSAError


class HFSampler:
    """``num_samples`` answers per prompt by ancestral sampling at ``temperature``.

    ``device``: "auto" is this process's GPU when there is one (each process of a job has its
    own), else the CPU; it is not part of the cache key.

    ``cache_implementation``: generate's KV cache. "static" allocates prompt + max_new_tokens
    once per batch: 1.14x (benchmarks/hf_cache.py, 2 threads) to 1.55x (the toy experiment's
    pretrained policy, 1 thread) the answers per second of "dynamic" on a CPU, whose cache is
    concatenated at every step (60% of a small model's generate time), with the same answers.
    At SmolLM2-135M's size the two take the same time (benchmarks/hf_draw.py, 64 rows, 2 threads).

    On a CPU the model's attention is ``gqa_attention.gqa_sdpa``, which leaves transformers' copy of the
    key/value cache per query head out: with the draw below, 1.63x the steps a second of plain
    generate on SmolLM2's shape (benchmarks/hf_draw.py).
    """

    def __init__(
        self,
        num_samples: int = 4,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        seed: int = 0,
        dtype: str = "float32",
        device: str = "auto",
        cache_implementation: str = "static",
    ) -> None:
        self.num_samples = num_samples
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.seed = seed
        self.dtype = dtype
        self.cache_implementation = cache_implementation
        if cache_implementation not in ("static", "dynamic"):
            raise NSAError(f"HFSampler: cache_implementation '{cache_implementation}' is not static or dynamic")
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise NSAError(f"HFSampler: device '{device}' is not one of auto, cpu, cuda or cuda:<index>")
        self._device = device
        self._loaded: tuple[str, object, object] | None = None

    def sample(self, model_dir: str, prompt_ids: Sequence[Sequence[int]]) -> list[list[Completion]]:
        model, tokenizer = self._load(model_dir)
        torch.manual_seed(self.seed ^ zlib.crc32(str(list(prompt_ids[:1])).encode()))
        out: list[list[Completion]] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            out.extend(self._generate(model, tokenizer, prompt_ids[start : start + self.batch_size]))
        return out

    def prompt_room(self, model_dir: str) -> PromptRoom | None:
        """The model's context (its config's ``max_position_embeddings``, read without the weights)
        less ``max_new_tokens``; None when the config does not say."""
        from nsa.models import policy_context

        context = policy_context(model_dir)
        return None if context is None else PromptRoom(context, self.max_new_tokens, "max_new_tokens")

    def _processors(self, draw: _Draw):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        warpers = [TemperatureLogitsWarper(self.temperature)] if self.temperature != 1.0 else []
        warpers += [TopPLogitsWarper(self.top_p)] if self.top_p < 1.0 else []
        return LogitsProcessorList([*warpers, draw])

    def _load(self, model_dir: str):
        if self._loaded is None or self._loaded[0] != model_dir:
            from nsa.models import load_policy, load_tokenizer, local_device
            from nsa.plugins.samplers.gqa_attention import use_on_cpu

            device = local_device() if self._device == "auto" else self._device
            model = load_policy(model_dir, self.dtype).to(device).eval()
            use_on_cpu(model)  # no copy of the key/value cache per query head at every step
            self._loaded = (model_dir, model, load_tokenizer(model_dir))
        return self._loaded[1], self._loaded[2]

    def _generate(self, model, tokenizer, prompts: Sequence[Sequence[int]]) -> list[list[Completion]]:
        width = max(len(p) for p in prompts)
        pad = tokenizer.pad_token_id
        device = model.device
        rows = [p for p in prompts for _ in range(self.num_samples)]  # each prompt G times, as generate would
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in rows], device=device)  # (P * G, W) left
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows], device=device)  # (P * G, W)
        draw = _Draw()
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                # temperature and top_p run as our processors and _Draw, last, draws the token: generate
                # only takes the one token it left (greedy), and none of its own warpers run
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=self._processors(draw),
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad,
                cache_implementation=self.cache_implementation,
            )
        generated = out[:, width:]  # (P * G, N)
        logprobs = draw.finish(generated)  # (P * G, N)
        answers = []
        for ids, lps in zip(generated.tolist(), logprobs.tolist()):
            kept = _trim(ids, tokenizer.eos_token_id, pad)
            answers.append(Completion(kept, lps[: len(kept)]))
        return [answers[i : i + self.num_samples] for i in range(0, len(answers), self.num_samples)]


class _Draw:
    """A logits processor, run last, that draws each row's token itself and keeps its log-prob.

    It samples from softmax(scores) by inverse CDF (one uniform per row, a cumulative sum and a
    binary search) and returns scores that are -inf everywhere but the drawn token, so generate's
    greedy step takes it. torch.multinomial, which generate's sampling uses, draws an exponential
    for every vocabulary entry: 30 ms a step for 32 rows of SmolLM2's 49152 on a CPU, 15% of the
    step (benchmarks/hf_draw.py). A token of probability 0 (outside top_p) is never drawn: the
    search returns the first index whose cumulative sum reaches u, and u > 0.
    """

    def __init__(self) -> None:
        self._drawn: list[torch.Tensor] = []  # per step, (B,) log-prob of the token drawn

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logprobs = scores.float().log_softmax(-1)  # (B, V)
        cdf = logprobs.exp().cumsum(-1)  # (B, V)
        u = (1.0 - torch.rand(cdf.shape[0], 1, device=cdf.device)) * cdf[:, -1:]  # (B, 1) in (0, total]
        token = torch.searchsorted(cdf, u).clamp(max=cdf.shape[1] - 1)  # (B, 1)
        self._drawn.append(logprobs.gather(-1, token).squeeze(-1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)

    def finish(self, generated: torch.Tensor) -> torch.Tensor:
        """(B, N) log-probs of ``generated`` (B, N), the tokens drawn at the N steps."""
        if not self._drawn:
            return generated.new_zeros(generated.shape, dtype=torch.float)
        return torch.stack(self._drawn, dim=1)[:, : generated.shape[1]]


def _trim(ids: list[int], eos: int, pad: int) -> list[int]:
    """Cut after the first EOS (kept: the policy learns to stop); drop trailing padding."""
    if eos in ids:
        return ids[: ids.index(eos) + 1]
    while ids and ids[-1] == pad:
        ids.pop()
    return ids
