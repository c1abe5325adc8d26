"""An LLM judge: one request per answer labels every step as correct or not.

The prompt (``llm_judge_prompt.txt`` next to this file, or ``prompt_file``) holds the
question, the numbered steps, an error taxonomy and the two context rules of the paper:
error propagation (a step built on an earlier uncorrected error is wrong) and error
termination (once the error is corrected, later steps can be correct again). Template
placeholders are ``{question}``, ``{steps}`` and ``{num_steps}``; every other brace is
literal, so a JSON example can sit in the prompt as is.

Scores are 1.0 (correct), 0.0 (incorrect) and ``None`` (unjudged). The reply is untrusted
text: the last JSON verdict list in it (fenced or in prose, found scanning back from the
end), a bare list of booleans, or ``Step 3: incorrect`` lines (the verdict word alone) are
read; anything else, a verdict list of the wrong length, a reply cut off at max_tokens or
one still inside ``<think>`` leaves that answer's steps unjudged. Nothing is ever "correct"
by default.

Backends
    ``openai``: POST ``{base_url}/chat/completions`` (vLLM, SGLang, llama.cpp, OpenAI)
    with the standard library, ``concurrency`` requests at a time, retrying connection
    errors, timeouts, broken HTTP answers, HTTP 429 and 5xx with exponential backoff (or the
    server's ``Retry-After``, at most 60 s). When more than ``max_failed_fraction`` of one
    call's requests still fail, the call raises instead of returning mostly unjudged steps.
    Redirects are not followed. The bearer key is read from the environment variable
    ``api_key_env`` at call time and never stored; it is optional for a server on
    127.0.0.1 / localhost, and never sent over plain http to any other host. With
    ``structured_output`` the reply is constrained by a JSON schema; a server that answers
    400 to that is asked again without it, and is not asked with it again.
    ``hf``: ``model`` is a local folder (or ``pkg:`` spec), decoded greedily with its chat
    template when it has one. Meant for small local judges and tests.
    ``vllm``: the vLLM offline engine in a child process (:mod:`nsa.vllm_worker`), placed
    and sized by ``engine``: the same prompt ids as ``hf``, every answer of a shard in one
    ``generate`` call, structured output through vLLM's JSON-schema decoding. ``close()``
    ends the process when the stage is done.

Cache identity: backend, model, base_url, the prompt's hash, max_tokens, temperature,
structured_output and threshold. Transport knobs (concurrency, retries, timeouts, the key's
variable name) do not change verdicts, so they are private and re-run nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from nsa.contracts import StepItem
from nsa.errors import NSAError
from nsa.models import policy_identity
from nsa.vllm_worker import DEFAULT_ENGINE, VLLMEngine, VLLMWorker, available

log = logging.getLogger(__name__)

DEFAULT_PROMPT = Path(__file__).with_name("llm_judge_prompt.txt")
_PLACEHOLDER = re.compile(r"\{(question|steps|num_steps)\}")
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# HTTP answers that no retry fixes and that mean the judge is misconfigured, not one bad answer.
_FATAL_STATUS = {401: "unauthorised (check the API key)", 403: "forbidden", 404: "not found (check base_url / model)"}
_MAX_REPLY_CHARS = 200_000  # bounds the JSON scan on runaway replies
# Characters the backward JSON scan may decode in all before it calls the reply malformed.
# Prose and LaTeX braces fail at once; only pathological nesting spends this.
_MAX_DECODE_WORK = 4_000_000
_MAX_RETRY_AFTER_S = 60.0


def _schema(num_steps: int | None) -> dict[str, Any]:
    """The JSON schema of a reply: one ``{"step", "correct"}`` object per step. Given the step
    count, exactly that many, numbered 1..n, so a constrained decoder cannot stop early or
    ramble on (a length the parser would refuse anyway)."""
    step: dict[str, Any] = {"type": "integer"}
    verdicts: dict[str, Any] = {"type": "array"}
    if num_steps:
        step.update(minimum=1, maximum=num_steps)
        verdicts.update(minItems=num_steps, maxItems=num_steps)
    verdicts["items"] = {
        "type": "object",
        "properties": {"step": step, "correct": {"type": "boolean"}},
        "required": ["step", "correct"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"verdicts": verdicts},
        "required": ["verdicts"],
        "additionalProperties": False,
    }


class _Transient(Exception):
    """A failure worth retrying; ``unreachable`` when no HTTP answer came back at all."""

    def __init__(self, message: str, unreachable: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.retry_after = retry_after


class _Rejected(Exception):
    """An HTTP 4xx answer that a retry will not change (``status`` kept for the 400 fallback)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect, so a 3xx comes back as an HTTPError (and the key goes nowhere else)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


class _Failed:
    """The outcome of a request that never got an answer."""

    def __init__(self, unreachable: bool, reason: str) -> None:
        self.unreachable = unreachable
        self.reason = reason


# ---------------------------------------------------------------------------- parsing

_TRUE = {"true", "correct", "yes", "right", "valid", "1"}
_FALSE = {"false", "incorrect", "no", "wrong", "invalid", "0"}
_VERDICT_KEYS = ("verdicts", "steps", "labels", "judgements", "judgments", "results")
_CORRECT_KEYS = ("correct", "is_correct", "verdict", "label")
# The verdict word must be the whole rest of the line (punctuation and markup aside, no "?"),
# so "Step 1: Right triangle ..." or "Step 2: Correct? No, it is wrong" are not verdicts.
_STEP_LINE = re.compile(
    r"(?im)^[^\w\n]*step\s*(\d+)\b[^\w\n]*(incorrect|correct|wrong|right|true|false|invalid|valid)[^\w\n?]*$"
)
_JSON_START = re.compile(r"[\[{]")


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _as_step(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _entries(value: Any) -> list[tuple[int | None, bool | None]] | None:
    """(step number or None, verdict or None) per entry of a JSON verdict list; None if not one."""
    if isinstance(value, dict):
        key = next((k for k in _VERDICT_KEYS if k in value), None)
        value = value[key] if key else None
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(v, (dict, bool)) for v in value):
        return None
    out: list[tuple[int | None, bool | None]] = []
    for entry in value:
        if isinstance(entry, bool):
            out.append((None, entry))
            continue
        verdict = next((entry[k] for k in _CORRECT_KEYS if k in entry), None)
        out.append((_as_step(entry.get("step")), _as_bool(verdict)))
    return out


def _last_json_verdicts(text: str) -> tuple[list[tuple[int | None, bool | None]] | None, bool]:
    """The verdict-shaped JSON value ending last in ``text`` (the outermost on a tie), and whether
    the scan finished.

    Every ``[`` / ``{`` is tried as a start, from the end back to the beginning, so no amount of
    text after an earlier draft can hide the final answer, and a list nested in a verdict entry
    never wins over the verdict list around it. The scan stops (unfinished: the caller calls the
    reply malformed, never falls back to an earlier value) once it has decoded
    ``_MAX_DECODE_WORK`` characters, which only pathological nesting reaches.
    """
    decoder, work = json.JSONDecoder(), 0
    best: tuple[int, list[tuple[int | None, bool | None]]] | None = None
    for start in reversed([m.start() for m in _JSON_START.finditer(text)]):
        if work > _MAX_DECODE_WORK:
            return None, False
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as err:
            work += err.pos - start + 1
            continue
        except (ValueError, RecursionError):  # deep nesting overflows the C scanner; huge ints
            work += len(text) - start
            continue
        work += end - start
        entries = _entries(value)
        if entries is not None and (best is None or end >= best[0]):
            best = (end, entries)
    return (best[1] if best else None), True


def _resolve(entries: list[tuple[int | None, bool | None]], num_steps: int) -> tuple[list[bool] | None, str]:
    """Verdicts in step order, or None and why (``malformed`` / ``wrong_length``)."""
    if len(entries) != num_steps:
        return None, "wrong_length"
    if any(verdict is None for _, verdict in entries):
        return None, "malformed"
    numbers = [step for step, _ in entries]
    if all(n is None for n in numbers):
        return [bool(v) for _, v in entries], "ok"
    if sorted(n for n in numbers if n is not None) != list(range(1, num_steps + 1)):
        return None, "malformed"  # duplicates, gaps, 0-based, or numbered only in part
    by_step = {step: verdict for step, verdict in entries}
    return [bool(by_step[n]) for n in range(1, num_steps + 1)], "ok"


def parse_verdicts(reply: str, num_steps: int) -> tuple[list[bool] | None, str]:
    """Read a judge's reply: per-step verdicts and ``ok``, or None and ``malformed`` / ``wrong_length``.

    The last JSON verdict list in the reply wins (models reason first, answer last); without
    one, ``Step k: correct/incorrect`` lines are read. A reply still inside ``<think>`` is malformed.
    """
    if reply.rfind("<think>") > reply.rfind("</think>"):
        return None, "malformed"  # the thoughts never ended: whatever follows is not an answer
    text = reply[-_MAX_REPLY_CHARS:]
    if "</think>" in text:  # reasoning models: only the part after the thoughts is the answer
        text = text.rsplit("</think>", 1)[1]
    entries, finished = _last_json_verdicts(text)
    if not finished:
        return None, "malformed"
    if entries is not None:
        return _resolve(entries, num_steps)
    lines = [(int(step), word.lower() in _TRUE) for step, word in _STEP_LINE.findall(text)]
    if not lines:
        return None, "malformed"
    numbered: dict[int, bool] = {}
    for step, verdict in lines:
        if numbered.setdefault(step, verdict) != verdict:
            return None, "malformed"  # the same step called both correct and incorrect
    return _resolve(list(numbered.items()), num_steps)


# ------------------------------------------------------------------------------ judge


def _load_prompt(prompt_file: str | None) -> str:
    path = Path(prompt_file).expanduser() if prompt_file else DEFAULT_PROMPT
    try:
        template = path.read_text(encoding="utf-8")
    except OSError as err:
        raise NSAError(f"LLMJudge prompt_file '{path}' cannot be read: {err.strerror or err}") from None
    if "{steps}" not in template:
        raise NSAError(f"LLMJudge prompt_file '{path}' has no {{steps}} placeholder")
    return template


class LLMJudge:
    """Labels every step of an answer with one LLM request; 1.0 correct, 0.0 incorrect, None unjudged."""

    def __init__(
        self,
        backend: Literal["openai", "hf", "vllm"] = "openai",
        model: str = "",
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str = "OPENAI_API_KEY",
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
    ) -> None:
        if backend not in ("openai", "hf", "vllm"):
            raise NSAError(f"LLMJudge backend must be 'openai', 'hf' or 'vllm', got '{backend}'")
        if backend != "openai" and not model:
            raise NSAError(f"LLMJudge backend '{backend}' needs model: a model folder, hub id or pkg:<package>/<file>")
        if backend == "vllm" and not available():
            raise NSAError("LLMJudge backend 'vllm' needs vllm installed (pip install vllm); or use backend: openai")
        if concurrency < 1 or retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise NSAError("LLMJudge needs concurrency >= 1, retries >= 0, timeout_s > 0 and backoff_s >= 0")
        if not 0.0 <= max_failed_fraction <= 1.0:
            raise NSAError(f"LLMJudge max_failed_fraction must be in [0, 1], got {max_failed_fraction}")
        template = _load_prompt(prompt_file)
        self.backend = backend
        self.model = model
        # for a local model, new weights in the same folder re-judge; a server's model is named only
        self.model_files = policy_identity(model)["files"] if backend != "openai" else {}
        self.base_url = base_url.rstrip("/")
        self.prompt_sha = hashlib.sha256(template.encode()).hexdigest()[:16]
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.structured_output = structured_output
        self.threshold = threshold
        self._dtype = dtype
        if backend == "vllm":  # the engine's weights dtype; the other backends ignore it (and keep their caches)
            self.dtype = dtype
        # Private: how requests travel, not what the judge says. The key's value is never stored.
        self._template = template
        self._api_key_env = api_key_env
        self._concurrency = concurrency
        self._retries = retries
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._max_failed_fraction = max_failed_fraction
        self._schema_level = 2 if structured_output else 0  # see _body
        self._stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._hf: tuple[Any, Any] | None = None
        self._engine = engine
        self._worker: VLLMWorker | None = None
        self._worker_tokenizer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # A lock cannot be pickled and a loaded model should not travel to a child process.
        return {**vars(self), "_lock": None, "_hf": None, "_worker": None, "_worker_tokenizer": None}

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
        backends = {"openai": self._openai_replies, "hf": self._hf_replies, "vllm": self._vllm_replies}
        replies = backends[self.backend](requests)
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
        """Frees a local model (hf) or ends the vLLM process; a later ``score`` starts it again."""
        if self._worker is not None:
            self._worker.close()
        self._worker = self._worker_tokenizer = self._hf = None

    def stats(self) -> dict[str, int]:
        """Counters since construction: requests, failed, malformed, wrong_length, unjudged_steps, retries."""
        keys = ("requests", "failed", "malformed", "wrong_length", "unjudged_steps", "retries")
        with self._lock:
            return {key: self._stats[key] for key in keys}

    # --------------------------------------------------------------------- scoring

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _scores(self, reply: str | _Failed, num_steps: int) -> list[float | None]:
        if isinstance(reply, _Failed):
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

    # ---------------------------------------------------------------------- openai

    def _api_key(self) -> str | None:
        key = os.environ.get(self._api_key_env)
        url = urlparse(self.base_url)
        local = url.hostname in _LOCAL_HOSTS
        if url.scheme == "http" and not local:
            if key:
                raise NSAError(
                    f"LLMJudge will not send the API key in {self._api_key_env} over plain http to {url.hostname}: "
                    f"use an https base_url, or unset {self._api_key_env} for a server that needs no key"
                )
            return None
        if key or local:
            return key or None
        raise NSAError(
            f"LLMJudge needs an API key for {self.base_url}: set the environment variable {self._api_key_env}"
        )

    def _openai_replies(self, requests: list[tuple[str, int]]) -> list[str | _Failed]:
        from concurrent.futures import ThreadPoolExecutor

        key = self._api_key()  # read once per call, passed along, never kept
        with ThreadPoolExecutor(max_workers=min(self._concurrency, len(requests))) as pool:
            replies = list(pool.map(lambda request: self._request(*request, key=key), requests))
        failures = [r for r in replies if isinstance(r, _Failed)]
        if len(failures) == len(replies) and all(f.unreachable for f in failures):
            # Nothing got through at all: a wrong URL or a server that is down, not bad answers.
            raise NSAError(f"LLMJudge cannot reach {self.base_url}: {failures[0].reason}; is the server running?")
        if len(failures) > self._max_failed_fraction * len(replies):
            # Committing a shard of mostly unjudged steps would hide the outage; fail so a rerun resumes.
            raise NSAError(
                f"LLMJudge: {len(failures)} of {len(replies)} requests to {self.base_url} failed "
                f"(last error {failures[-1].reason}); nothing of this shard was kept, rerun to resume"
            )
        return replies

    def _request(self, prompt: str, num_steps: int | None = None, key: str | None = None) -> str | _Failed:
        """One answer's reply, retried with exponential backoff; a _Failed when every try failed."""
        self._count("requests")
        last = _Transient("no attempt made")
        for attempt in range(self._retries + 1):
            if attempt:
                self._count("retries")
                wait = last.retry_after if last.retry_after is not None else self._backoff_s * 2 ** (attempt - 1)
                time.sleep(wait)
            try:
                return self._post_with_fallback(prompt, key, num_steps)
            except _Transient as err:
                last = err
            except _Rejected as err:
                last = _Transient(str(err))
                break  # a 4xx about this request: the same request gets the same answer
        self._count("failed")
        return _Failed(last.unreachable, str(last))

    def _post_with_fallback(self, prompt: str, key: str | None, num_steps: int | None) -> str:
        """Posts with the strictest schema the server has not refused; on HTTP 400 steps down
        once per level (exact schema -> open schema -> none) and remembers where it got through."""
        level = self._schema_level
        while True:
            try:
                reply = self._post(prompt, key, level, num_steps)
                break
            except _Rejected as err:
                if level == 0 or err.status != 400:
                    raise
                level -= 1
        if level < self._schema_level:
            what = ["no response_format", "an open JSON schema", "the exact schema"][level]
            log.warning("LLMJudge: %s refused a stricter response_format; sending %s", self.base_url, what)
            self._schema_level = level
        return reply

    def _body(self, prompt: str, schema_level: int, num_steps: int | None = None) -> dict[str, Any]:
        """``schema_level``: 2 the exact schema (n verdicts numbered 1..n), 1 an open one, 0 none."""
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.model:  # some servers serve one model and take no name
            body["model"] = self.model
        if schema_level:
            schema = _schema(num_steps if schema_level == 2 else None)
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "step_verdicts", "strict": True, "schema": schema},
            }
        return body

    def _post(self, prompt: str, key: str | None, schema_level: int, num_steps: int | None = None) -> str:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(self._body(prompt, schema_level, num_steps)).encode()
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data, headers, method="POST")
        # No redirects: following one would resend the Authorization header to wherever it points.
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            with opener.open(request, timeout=self._timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise self._http_error(err) from None
        except urllib.error.URLError as err:
            timed_out = isinstance(err.reason, TimeoutError)
            raise _Transient(f"{err.reason}", unreachable=not timed_out) from None
        except TimeoutError:
            raise _Transient(f"no reply within {self._timeout_s} s") from None
        except OSError as err:  # reset or dropped connection
            raise _Transient(f"{type(err).__name__}: {err}", unreachable=True) from None
        except http.client.HTTPException as err:  # IncompleteRead, BadStatusLine, LineTooLong: not OSErrors
            raise _Transient(f"{type(err).__name__}: {err!r}"[:300]) from None
        return _content(raw)

    def _http_error(self, err: Any) -> Exception:
        status = int(err.code)
        if status in _FATAL_STATUS:
            said = _server_message(err)
            return NSAError(f"LLMJudge: {self.base_url} answered HTTP {status} {_FATAL_STATUS[status]}{said}")
        if 300 <= status < 400:
            where = err.headers.get("Location", "?") if err.headers else "?"
            return NSAError(
                f"LLMJudge: {self.base_url} answered HTTP {status} redirecting to {where}; redirects are not "
                "followed (they would resend the API key), set base_url to the final address"
            )
        if status == 429 or status >= 500:
            after = _retry_after(err.headers) if status in (429, 503) else None
            return _Transient(f"HTTP {status}", retry_after=after)
        return _Rejected(status, f"HTTP {status}{_server_message(err)}")

    # -------------------------------------------------------------------------- hf

    def _hf_replies(self, requests: list[tuple[str, int]]) -> list[str | _Failed]:
        import torch

        model, tokenizer = self._hf_load()
        replies: list[str | _Failed] = []
        for prompt, _ in requests:  # free-form: generate() has no JSON-schema decoding
            self._count("requests")
            ids = self._hf_encode(tokenizer, prompt).to(model.device)
            # temperature 0 means greedy; generate() rejects temperature=0 with do_sample.
            greedy = self.temperature <= 0
            sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": self.temperature}
            with torch.no_grad():
                generated = model.generate(
                    **ids, max_new_tokens=self.max_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
                )
            new = generated[0, ids["input_ids"].shape[1] :]
            cut_off = len(new) >= self.max_tokens and int(new[-1]) != tokenizer.eos_token_id
            # A reply cut off at max_tokens is not an answer (like finish_reason "length").
            replies.append("" if cut_off else tokenizer.decode(new, skip_special_tokens=True))
        return replies

    def _hf_load(self) -> tuple[Any, Any]:
        if self._hf is None:
            from nsa.models import load_policy, load_tokenizer, local_device, resolve_policy

            folder = resolve_policy(self.model)
            self._hf = (load_policy(folder).to(local_device()).eval(), load_tokenizer(folder))
        return self._hf

    @staticmethod
    def _hf_encode(tokenizer: Any, prompt: str) -> Any:
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return tokenizer(prompt, return_tensors="pt")

    # ------------------------------------------------------------------------ vllm

    def _vllm_replies(self, requests: list[tuple[str, int]]) -> list[str | _Failed]:
        if self._worker is None:
            from nsa.models import load_tokenizer, resolve_policy

            folder = resolve_policy(self.model)
            self._worker_tokenizer = load_tokenizer(folder)
            # JSON without free whitespace: a weak model would otherwise fill max_tokens with it
            options = {
                "dtype": self._dtype,
                "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
            }
            self._worker = VLLMWorker("LLMJudge", folder, options, self._engine)
            self._worker.start()
        tokenizer = self._worker_tokenizer
        self._count("requests", len(requests))
        ids = [self._hf_encode(tokenizer, prompt)["input_ids"][0].tolist() for prompt, _ in requests]
        # vLLM refuses a prompt beyond the model's context: that one answer fails, not the shard
        fits = [k for k, prompt_ids in enumerate(ids) if len(prompt_ids) < self._worker.max_model_len]
        replies: list[str | _Failed] = [_Failed(False, "prompt longer than the model's context")] * len(ids)
        self._count("failed", len(ids) - len(fits))
        if fits:
            sampling = [self._sampling(requests[k][1]) for k in fits]
            for k, (text, finish, _) in zip(fits, self._worker.generate([ids[k] for k in fits], sampling), strict=True):
                replies[k] = "" if finish == "length" else text  # cut off: not an answer, as elsewhere
        return replies

    def _sampling(self, num_steps: int) -> dict[str, Any]:
        sampling: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.structured_output:
            sampling["json_schema"] = _schema(num_steps)
        return sampling


def _server_message(err: Any) -> str:
    """``: <the server's own error message>``, one line of at most 200 characters, or ''."""
    try:
        raw = err.read(4096).decode("utf-8", "replace")
    except Exception:  # a body we cannot read adds nothing
        return ""
    try:
        body = json.loads(raw)
        error = body.get("error", body) if isinstance(body, dict) else body
        text = error.get("message", raw) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        text = raw
    text = " ".join(str(text).split())[:200]
    return f": {text}" if text else ""


def _retry_after(headers: Any) -> float | None:
    """A ``Retry-After`` header given in seconds, capped at 60 s; None when absent or an HTTP date."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if not seconds >= 0:  # negative or NaN
        return None
    return min(seconds, _MAX_RETRY_AFTER_S)


def _content(raw: bytes) -> str:
    """The assistant text of a chat-completions answer; an unreadable or cut-off answer parses as malformed."""
    try:
        choice = json.loads(raw)["choices"][0]
        message = choice["message"]
        content = message.get("content") or ""
        if choice.get("finish_reason") == "length":
            return ""  # cut off at max_tokens: the verdict may be missing or a draft
    except (ValueError, RecursionError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    return content if isinstance(content, str) else ""
