"""An LLM judge: one request per answer labels every step as correct or not.

The prompt (``llm_judge_prompt.txt`` next to this file, or ``prompt_file``) holds the
question, the numbered steps, an error taxonomy and the two context rules of the paper:
error propagation (a step built on an earlier uncorrected error is wrong) and error
termination (once the error is corrected, later steps can be correct again). Template
placeholders are ``{question}``, ``{steps}`` and ``{num_steps}``; every other brace is
literal, so a JSON example can sit in the prompt as is.

Scores are 1.0 (correct), 0.0 (incorrect) and ``None`` (unjudged). Every backend's reply
goes through one tolerant parser (:mod:`.verdicts`): a malformed, wrong-length or cut-off
reply leaves that answer's steps unjudged, and nothing is "correct" by default.

Backends, one module each:
    ``openai`` (:mod:`.openai_chat`): any OpenAI-compatible server, through the openai SDK.
    ``anthropic`` (:mod:`.anthropic_messages`): Claude, the paper's judge, through the
    anthropic SDK, the verdicts as a forced tool call; ``thinking_tokens`` turns on extended
    thinking. Both remote backends send ``concurrency`` requests at a time, retry connection
    errors, timeouts, broken HTTP answers, HTTP 429 and 5xx with exponential backoff (or the
    server's ``Retry-After``, at most 60 s), follow no redirect, read the key from the
    variable ``api_key_env`` at call time (never stored, never sent over plain http to another
    host), and fail the call when more than ``max_failed_fraction`` of its requests fail
    (:mod:`.remote`).
    ``hf`` (:mod:`.llm_hf`): transformers ``generate``, for small local judges and tests.
    ``vllm`` (:mod:`.llm_vllm`): the vLLM offline engine in a child process.

Cache identity: backend, model, base_url, the prompt's hash, max_tokens, temperature,
structured_output, threshold (and dtype for vllm, thinking_tokens for anthropic). Transport
knobs (concurrency, retries, timeouts, the key's variable name) do not change verdicts, so
they are private and re-run nothing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from nsa.contracts import StepItem
from nsa.errors import NSAError
from nsa.models import policy_identity
from nsa.plugins.judges import remote
from nsa.plugins.judges.verdicts import parse_verdicts
from nsa.vllm_worker import DEFAULT_ENGINE, VLLMEngine, available

log = logging.getLogger(__name__)

DEFAULT_PROMPT = Path(__file__).with_name("llm_judge_prompt.txt")
_PLACEHOLDER = re.compile(r"\{(question|steps|num_steps)\}")
BACKENDS = ("openai", "anthropic", "hf", "vllm")
REMOTE = {  # backend: (default base_url, default variable holding the key)
    "openai": ("http://127.0.0.1:8000/v1", "OPENAI_API_KEY"),
    "anthropic": ("https://api.anthropic.com", "ANTHROPIC_API_KEY"),
}


def _load_prompt(prompt_file: str | None) -> str:
    path = Path(prompt_file).expanduser() if prompt_file else DEFAULT_PROMPT
    try:
        template = path.read_text(encoding="utf-8")
    except OSError as err:
        raise NSAError(f"LLMJudge prompt_file '{path}' cannot be read: {err.strerror or err}") from None
    if "{steps}" not in template:
        raise NSAError(f"LLMJudge prompt_file '{path}' has no {{steps}} placeholder")
    return template


def _check(backend: str, model: str, concurrency: int, retries: int, timeout_s: float, backoff_s: float) -> None:
    if backend not in BACKENDS:
        raise NSAError(f"LLMJudge backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend in ("hf", "vllm", "anthropic") and not model:
        what = "a Claude model name" if backend == "anthropic" else "a model folder, hub id or pkg:<package>/<file>"
        raise NSAError(f"LLMJudge backend '{backend}' needs model: {what}")
    if backend == "vllm" and not available():
        raise NSAError("LLMJudge backend 'vllm' needs vllm installed (pip install vllm); or use backend: openai")
    if concurrency < 1 or retries < 0 or timeout_s <= 0 or backoff_s < 0:
        raise NSAError("LLMJudge needs concurrency >= 1, retries >= 0, timeout_s > 0 and backoff_s >= 0")


def _check_anthropic(backend: str, temperature: float, thinking_tokens: int, max_tokens: int) -> None:
    if backend != "anthropic" and thinking_tokens:
        raise NSAError(f"LLMJudge thinking_tokens (Claude's thinking) is for backend 'anthropic', not '{backend}'")
    if backend == "anthropic" and temperature != 0.0:
        raise NSAError(
            "LLMJudge temperature: the Messages API (anthropic SDK 2.x) takes none and samples as Anthropic sets "
            "it; leave temperature at its default for backend 'anthropic'"
        )
    if thinking_tokens and not 1024 <= thinking_tokens < max_tokens:
        raise NSAError(
            f"LLMJudge thinking_tokens is {thinking_tokens}: extended thinking needs at least 1024 tokens and "
            f"fewer than max_tokens ({max_tokens}); 0 turns it off"
        )


class LLMJudge:
    """Labels every step of an answer with one LLM request; 1.0 correct, 0.0 incorrect, None unjudged."""

    def __init__(
        self,
        backend: Literal["openai", "anthropic", "hf", "vllm"] = "openai",
        model: str = "",
        base_url: str | None = None,
        api_key_env: str | None = None,
        prompt_file: str | None = None,
        concurrency: int = 8,
        retries: int = 3,
        timeout_s: float = 120.0,
        max_tokens: int = 2048,
        temperature: float = 0.0,
        structured_output: bool = True,
        threshold: float = 0.5,
        backoff_s: float = 1.0,
        max_failed_fraction: float = 0.5,
        engine: VLLMEngine = DEFAULT_ENGINE,
        dtype: str = "auto",
        thinking_tokens: int = 0,
        mode: Literal["online", "batch"] = "online",
        batch_dir: str = ".nsa_cache/batches",
        poll_s: float = 30.0,
    ) -> None:
        """``base_url`` and ``api_key_env`` default to the backend's (a local OpenAI-compatible
        server and OPENAI_API_KEY; Anthropic's API and ANTHROPIC_API_KEY). ``thinking_tokens``:
        Claude's extended-thinking budget (anthropic only; 0 is off). ``mode: batch`` sends each
        shard's requests as one batch of the provider's batch API (openai and anthropic), recorded
        in ``batch_dir`` so that a killed run never submits a request twice; ``poll_s`` is the
        wait between looks at a batch."""
        _check(backend, model, concurrency, retries, timeout_s, backoff_s)
        if not 0.0 <= max_failed_fraction <= 1.0:
            raise NSAError(f"LLMJudge max_failed_fraction must be in [0, 1], got {max_failed_fraction}")
        _check_anthropic(backend, temperature, thinking_tokens, max_tokens)
        if mode not in ("online", "batch") or poll_s <= 0:
            raise NSAError(f"LLMJudge needs mode 'online' or 'batch' and poll_s > 0, got '{mode}' and {poll_s}")
        if mode == "batch" and (backend not in REMOTE or not model):
            raise NSAError(f"LLMJudge mode 'batch' needs backend openai or anthropic and a model, got '{backend}'")
        template = _load_prompt(prompt_file)
        # hf and vllm keep the openai default base_url: it is part of their cached identity since before
        url, key_env = REMOTE.get(backend, REMOTE["openai"])
        self.backend = backend
        self.model = model
        # for a local model, new weights in the same folder re-judge; a server's model is named only
        self.model_files = policy_identity(model)["files"] if backend in ("hf", "vllm") else {}
        self.base_url = (base_url or url).rstrip("/")
        self.prompt_sha = hashlib.sha256(template.encode()).hexdigest()[:16]
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.structured_output = structured_output
        self.threshold = threshold
        # public only where they apply, so that the other backends' cached verdicts keep their identity
        if backend == "vllm":
            self.dtype = dtype
        if backend == "anthropic":
            self.thinking_tokens = thinking_tokens
        # Private: how requests travel, not what the judge says. The key's value is never stored.
        self._dtype = dtype
        self._thinking_tokens = thinking_tokens
        self._template = template
        self._api_key_env = api_key_env or key_env
        self._concurrency = concurrency
        self._retries = retries
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._max_failed_fraction = max_failed_fraction
        self._engine = engine
        # how the requests travel (one batch or one by one), not what the judge says: private
        self._mode = mode
        self._batch_dir = batch_dir
        self._poll_s = poll_s
        self._stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._backend: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # A lock, a client or a loaded model cannot or should not travel to a child process.
        return {**vars(self), "_lock": None, "_backend": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()

    # -------------------------------------------------------------------- public API

    def score(self, items: Sequence[StepItem]) -> list[list[float | None]]:
        todo = [i for i, item in enumerate(items) if item.spans]
        out: list[list[float | None]] = [[] for _ in items]
        if not todo:
            return out  # nothing to judge: no request at all
        requests = [(self.render(items[i]), len(items[i].spans)) for i in todo]
        replies = self._remote_replies(requests) if self.backend in REMOTE else self._local_replies(requests)
        for i, reply in zip(todo, replies, strict=True):
            out[i] = self._scores(reply, len(items[i].spans))
        self._warn_if_unjudged(len(todo))
        return out

    def render(self, item: StepItem) -> str:
        """The prompt for one answer; one pass, so a question containing ``{steps}`` stays literal."""
        steps = "\n\n".join(
            f"[Step {k}]\n{item.response[start:end].strip()}" for k, (start, end) in enumerate(item.spans, 1)
        )
        values = {"question": item.question.strip(), "steps": steps, "num_steps": str(len(item.spans))}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self._template)

    @property
    def devices_per_engine(self) -> int:
        """The node's devices one vLLM engine spans (tensor parallelism); the other backends need one or none."""
        return self._engine.tensor_parallel_size if self.backend == "vllm" else 1

    def close(self) -> None:
        """Frees a local model (hf), ends the vLLM process or closes a client; a later ``score`` starts again."""
        if self._backend is not None:
            self._backend.close()
        self._backend = None

    def stats(self) -> dict[str, int]:
        """Counters since construction: requests, failed, malformed, wrong_length, unjudged_steps, retries."""
        keys = ("requests", "failed", "malformed", "wrong_length", "unjudged_steps", "retries")
        with self._lock:
            return {key: self._stats[key] for key in keys}

    # --------------------------------------------------------------------- backends

    def transport(self) -> Any:
        """The backend that carries this judge's requests, made on first use."""
        if self._backend is None:
            self._backend = self._make_backend()
        return self._backend

    def _make_backend(self) -> Any:
        if self.backend == "openai":
            from nsa.plugins.judges.openai_chat import OpenAIChat

            return OpenAIChat(
                self.base_url, self.model, self._timeout_s, self.max_tokens, self.temperature, self.structured_output
            )
        if self.backend == "anthropic":
            from nsa.plugins.judges.anthropic_messages import AnthropicMessages

            return AnthropicMessages(self.base_url, self.model, self._timeout_s, self.max_tokens, self._thinking_tokens)
        if self.backend == "hf":
            from nsa.plugins.judges.llm_hf import HFGenerate

            return HFGenerate(self.model, self.max_tokens, self.temperature)
        from nsa.plugins.judges.llm_vllm import VLLMGenerate

        args = (self.model, self._dtype, self._engine, self.max_tokens, self.temperature, self.structured_output)
        return VLLMGenerate(*args)

    def _remote_replies(self, requests: list[tuple[str, int]]) -> list[str | remote.Failed]:
        key = remote.api_key(self.base_url, self._api_key_env)  # read once per call, passed along, never kept
        if self._mode == "batch":
            return self._batch_replies(requests, key)
        post = self.transport().post
        work = [
            functools.partial(
                remote.with_retries,
                functools.partial(post, prompt, num_steps, key),
                self._retries,
                self._backoff_s,
                self._count,
            )
            for prompt, num_steps in requests
        ]
        replies = remote.concurrently(work, self._concurrency)
        remote.check_failures(replies, self.base_url, self._max_failed_fraction)
        return replies

    def _batch_replies(self, requests: list[tuple[str, int]], key: str | None) -> list[str | remote.Failed]:
        from nsa.plugins.judges import batches

        identity = {k: v for k, v in vars(self).items() if not k.startswith("_")}  # what the verdicts depend on
        journal = batches.Journal(Path(self._batch_dir) / f"{batches.digest(identity, requests)}.json")
        replies = batches.batch_replies(self.transport(), requests, key, journal, self._poll_s, self._count)
        remote.check_failures(replies, self.base_url, self._max_failed_fraction)
        return replies

    def _local_replies(self, requests: list[tuple[str, int]]) -> list[str | remote.Failed]:
        return self.transport().replies(requests, self._count)

    # --------------------------------------------------------------------- scoring

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _scores(self, reply: str | remote.Failed, num_steps: int) -> list[float | None]:
        if isinstance(reply, remote.Failed):
            self._count("unjudged_steps", num_steps)
            return [None] * num_steps
        verdicts, why = parse_verdicts(reply, num_steps)
        if verdicts is None:
            self._count(why)
            self._count("unjudged_steps", num_steps)
            return [None] * num_steps
        return [1.0 if ok else 0.0 for ok in verdicts]

    def _warn_if_unjudged(self, answers: int) -> None:
        stats = self.stats()
        if stats["unjudged_steps"]:
            log.warning("LLMJudge: judged %d answers in this call; running totals %s", answers, stats)
