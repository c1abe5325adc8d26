"""What LLMJudge's remote backends (``openai``, ``anthropic``) share: where the API key may
go, the retry loop, how an SDK's HTTP error is read, and when a call fails as a whole.

The SDKs carry the requests (connection reuse, timeouts, typed errors); the retries are
nsa's (the SDKs' own are off), so each one is counted (``data/judge/<name>/retries``), a
``Retry-After`` is honoured up to 60 s, and a 4xx about one request is never sent again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from nsa.errors import NSAError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# HTTP answers that no retry fixes and that mean the judge is misconfigured, not one bad answer.
FATAL_STATUS = {401: "unauthorised (check the API key)", 403: "forbidden", 404: "not found (check base_url / model)"}
MAX_RETRY_AFTER_S = 60.0

Count = Callable[[str, int], None]  # (counter name, increment): the judge's counters


class Transient(Exception):
    """A failure worth retrying; ``unreachable`` when no HTTP answer came back at all."""

    def __init__(self, message: str, unreachable: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        self.retry_after = retry_after


class Rejected(Exception):
    """An HTTP 4xx answer that a retry will not change (``status`` kept for the backends' fallbacks)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Failed:
    """The outcome of a request that never got an answer."""

    def __init__(self, unreachable: bool, reason: str) -> None:
        self.unreachable = unreachable
        self.reason = reason


def api_key(base_url: str, env: str) -> str | None:
    """The key in ``env``, read at call time and never stored: optional for a server on this
    machine, never sent over plain http to another host."""
    key = os.environ.get(env)
    url = urlparse(base_url)
    local = url.hostname in LOCAL_HOSTS
    if url.scheme == "http" and not local:
        if key:
            raise NSAError(
                f"LLMJudge will not send the API key in {env} over plain http to {url.hostname}: "
                f"use an https base_url, or unset {env} for a server that needs no key"
            )
        return None
    if key or local:
        return key or None
    raise NSAError(f"LLMJudge needs an API key for {base_url}: set the environment variable {env}")


def with_retries(post: Callable[[], str], retries: int, backoff_s: float, count: Count) -> str | Failed:
    """One answer's reply, retried with exponential backoff (or the server's Retry-After); a
    Failed when every try failed."""
    count("requests", 1)
    last = Transient("no attempt made")
    for attempt in range(retries + 1):
        if attempt:
            count("retries", 1)
            time.sleep(last.retry_after if last.retry_after is not None else backoff_s * 2 ** (attempt - 1))
        try:
            return post()
        except Transient as err:
            last = err
        except Rejected as err:
            last = Transient(str(err))
            break  # a 4xx about this request: the same request gets the same answer
    count("failed", 1)
    return Failed(last.unreachable, str(last))


def concurrently(work: Sequence[Callable[[], str | Failed]], concurrency: int) -> list[str | Failed]:
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(work)))) as pool:
        return list(pool.map(lambda one: one(), work))


def check_failures(replies: list[str | Failed], base_url: str, max_failed_fraction: float) -> None:
    """A call whose requests mostly failed raises: committing a shard of mostly unjudged steps
    would hide the outage, and a rerun resumes from the last committed shard."""
    failures = [r for r in replies if isinstance(r, Failed)]
    if failures and len(failures) == len(replies) and all(f.unreachable for f in failures):
        # nothing got through at all: a wrong URL or a server that is down, not bad answers
        raise NSAError(f"LLMJudge cannot reach {base_url}: {failures[0].reason}; is the server running?")
    if len(failures) > max_failed_fraction * len(replies):
        raise NSAError(
            f"LLMJudge: {len(failures)} of {len(replies)} requests to {base_url} failed "
            f"(last error {failures[-1].reason}); nothing of this shard was kept, rerun to resume"
        )


def no_answer(err: BaseException) -> Transient:
    """An SDK's connection error: unreachable, unless the server answered with broken HTTP."""
    cause = err.__cause__ or err
    broken = "Protocol" in type(cause).__name__  # RemoteProtocolError: a bad status line, a cut-off body
    return Transient(f"{type(cause).__name__}: {cause}"[:300], unreachable=not broken)


def status_error(base_url: str, status: int, headers: Any, body: object) -> Exception:
    """What an HTTP error answer means for the judge, from either SDK's APIStatusError."""
    if status in FATAL_STATUS:
        return NSAError(f"LLMJudge: {base_url} answered HTTP {status} {FATAL_STATUS[status]}{said(body)}")
    if 300 <= status < 400:
        where = headers.get("location", "?") if headers is not None else "?"
        return NSAError(
            f"LLMJudge: {base_url} answered HTTP {status} redirecting to {where}; redirects are not "
            "followed (they would resend the API key), set base_url to the final address"
        )
    if status == 429 or status >= 500:
        after = retry_after(headers) if status in (429, 503, 529) else None
        return Transient(f"HTTP {status}", retry_after=after)
    return Rejected(status, f"HTTP {status}{said(body)}")


def said(body: object) -> str:
    """``: <the server's own error message>``, one line of at most 200 characters, or ''.
    OpenAI's ``{"error": {"message"}}`` and Anthropic's ``{"type": "error", "error": {...}}`` alike."""
    error = body.get("error", body) if isinstance(body, dict) else body
    text = error.get("message", error) if isinstance(error, dict) else error
    text = " ".join(str(text or "").split())[:200]
    return f": {text}" if text else ""


def retry_after(headers: Any) -> float | None:
    """A ``Retry-After`` header given in seconds, capped at 60 s; None when absent or an HTTP date."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if not seconds >= 0:  # negative or NaN
        return None
    return min(seconds, MAX_RETRY_AFTER_S)
