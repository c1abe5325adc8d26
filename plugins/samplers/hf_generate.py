"""Sampling with Hugging Face ``generate``: the fallback sampler, good for small models.

Keeps the generated token ids as they came (EOS included, padding removed) and the
log-probability of each under the distribution it was drawn from (after temperature and
top_p, read by a logits processor that runs last). Seeding is per call and derived from the prompts, so
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

    def _processors(self, recorder: _SampledLogprobs):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        warpers = [TemperatureLogitsWarper(self.temperature)] if self.temperature != 1.0 else []
        warpers += [TopPLogitsWarper(self.top_p)] if self.top_p < 1.0 else []
        return LogitsProcessorList([*warpers, recorder])

    def _load(self, model_dir: str):
        if self._loaded is None or self._loaded[0] != model_dir:
            from nsa.models import load_policy, load_tokenizer, local_device

            device = local_device() if self._device == "auto" else self._device
            self._loaded = (model_dir, load_policy(model_dir, self.dtype).to(device).eval(), load_tokenizer(model_dir))
        return self._loaded[1], self._loaded[2]

    def _generate(self, model, tokenizer, prompts: Sequence[Sequence[int]]) -> list[list[Completion]]:
        width = max(len(p) for p in prompts)
        pad = tokenizer.pad_token_id
        device = model.device
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)  # (P, W) left
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # (P, W)
        recorder = _SampledLogprobs()
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=True,
                # temperature and top_p run as our processors, so the recorder after them sees the
                # distribution each token is drawn from (generate puts its own after custom ones)
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                logits_processor=self._processors(recorder),
                max_new_tokens=self.max_new_tokens,
                num_return_sequences=self.num_samples,
                pad_token_id=pad,
                cache_implementation=self.cache_implementation,
            )
        generated = out[:, width:]  # (P * G, N)
        logprobs = recorder.finish(generated)  # (P * G, N)
        answers = []
        for ids, lps in zip(generated.tolist(), logprobs.tolist()):
            kept = _trim(ids, tokenizer.eos_token_id, pad)
            answers.append(Completion(kept, lps[: len(kept)]))
        return [answers[i : i + self.num_samples] for i in range(0, len(answers), self.num_samples)]


class _SampledLogprobs:
    """A logits processor, run last, that keeps the log-prob of each drawn token.

    Called at step t with the ids so far (the token drawn at step t-1 last) and the
    processed scores of step t; it keeps one step's log-softmax, not all of them, so memory
    does not grow with the answer length (generate's ``output_scores`` keeps (B, V) per step).
    """

    def __init__(self) -> None:
        self._previous: torch.Tensor | None = None  # (B, V) log-probs of the last step
        self._drawn: list[torch.Tensor] = []  # per step, (B,) log-prob of the token drawn

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids[:, -1])
        self._previous = scores.float().log_softmax(-1)
        return scores

    def finish(self, generated: torch.Tensor) -> torch.Tensor:
        """(B, N) log-probs of ``generated`` (B, N), the tokens drawn at the N steps."""
        self._take(generated[:, -1])
        return (
            torch.stack(self._drawn, dim=1) if self._drawn else generated.new_zeros(generated.shape, dtype=torch.float)
        )

    def _take(self, tokens: torch.Tensor) -> None:
        if self._previous is not None:
            self._drawn.append(self._previous.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
            self._previous = None


def _trim(ids: list[int], eos: int, pad: int) -> list[int]:
    """Cut after the first EOS (kept: the policy learns to stop); drop trailing padding."""
    if eos in ids:
        return ids[: ids.index(eos) + 1]
    while ids and ids[-1] == pad:
        ids.pop()
    return ids
