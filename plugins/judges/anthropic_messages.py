"""LLMJudge's ``anthropic`` backend: Claude through the Messages API and the anthropic SDK.

The paper's judge is Claude. Anthropic's OpenAI-compatible endpoint ignores
``response_format``, so the verdicts come through a tool instead: one tool,
``record_verdicts``, whose input schema is the exact-n-verdicts schema, and the request
forces it (``tool_choice``). With extended thinking (``thinking_tokens``, at least 1024 and
below ``max_tokens``) the API allows no forced tool: the tool is offered (``auto``), and a
reply without it is read from its text like any other backend's. The Messages API of the
anthropic SDK 2.x takes no temperature: the model samples as Anthropic sets it (LLMJudge
refuses a temperature other than its default for this backend). A reply stopped at
``max_tokens`` is cut off, hence unjudged.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from nsa.plugins.judges.remote import Failed, Transient, no_answer, status_error
from nsa.plugins.judges.verdicts import schema

TOOL = "record_verdicts"
DESCRIPTION = "Record whether each step of the answer is correct, one verdict per step, in step order."


class AnthropicMessages:
    """Posts one prompt and returns the verdicts as JSON text; raises remote.Transient, Rejected or NSAError."""

    def __init__(self, base_url: str, model: str, timeout_s: float, max_tokens: int, thinking_tokens: int) -> None:
        self.base_url = base_url
        self.model = model
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.thinking_tokens = thinking_tokens
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """One client per judge, made on first use: its connections are reused across requests."""
        import anthropic

        with self._lock:
            if self._client is None:
                self._client = anthropic.Anthropic(
                    api_key="sent-per-request",  # each request sets or omits the header, as the SDK writes it
                    base_url=self.base_url,
                    timeout=self.timeout_s,
                    max_retries=0,  # remote.with_retries retries, and counts
                    http_client=anthropic.DefaultHttpxClient(follow_redirects=False),
                )
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def params(self, prompt: str, num_steps: int) -> dict[str, Any]:
        """The Messages API request: the prompt, the verdict tool, and thinking when asked for."""
        tool = {"name": TOOL, "description": DESCRIPTION, "input_schema": schema(num_steps)}
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": prompt}],
            "tools": [tool],
        }
        if self.thinking_tokens:
            params["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_tokens}
            params["tool_choice"] = {"type": "auto"}
        else:
            params["tool_choice"] = {"type": "tool", "name": TOOL}
        return params

    def post(self, prompt: str, num_steps: int, key: str | None) -> str:
        import anthropic

        headers = {"Authorization": f"Bearer {key}" if key else anthropic.omit}  # the SDK 2.x form of the key
        try:
            raw = self.client().messages.with_raw_response.create(
                extra_headers=headers, **self.params(prompt, num_steps)
            )
        except anthropic.APITimeoutError:
            raise Transient(f"no reply within {self.timeout_s} s") from None
        except anthropic.APIConnectionError as err:
            raise no_answer(err) from None
        except anthropic.APIStatusError as err:
            raise status_error(self.base_url, err.status_code, err.response.headers, err.body) from None
        return verdict_text(raw.http_response.content)

    # ------------------------------------------------------ Message Batches (batches.py)

    def keyed_client(self, key: str | None) -> Any:
        """A client for one batch call, holding the key only for that call: the SDK's ``results``
        makes a request of its own (the batch, for its results URL) with the client's key."""
        import anthropic

        return anthropic.Anthropic(
            api_key=key or "none-needed-here",
            base_url=self.base_url,
            timeout=self.timeout_s,
            max_retries=0,
            http_client=anthropic.DefaultHttpxClient(follow_redirects=False),
        )

    def submit(self, requests: dict[str, tuple[str, int]], key: str | None) -> str:
        batch_requests = [{"custom_id": cid, "params": self.params(p, n)} for cid, (p, n) in requests.items()]
        with self.keyed_client(key) as client:
            return client.messages.batches.create(requests=batch_requests).id

    def poll(self, batch_id: str, key: str | None) -> tuple[bool, int]:
        with self.keyed_client(key) as client:
            batch = client.messages.batches.retrieve(batch_id)
        c = batch.request_counts
        return batch.processing_status == "ended", c.succeeded + c.errored + c.canceled + c.expired

    def results(self, batch_id: str, key: str | None) -> dict[str, str | Failed | None]:
        """Each request's verdict text, a Failed for one that errored, None for one that expired or
        was cancelled (resubmitted by batches.py)."""
        out: dict[str, str | Failed | None] = {}
        with self.keyed_client(key) as client:
            for entry in client.messages.batches.results(batch_id):
                result = entry.result
                if result.type == "succeeded":
                    out[entry.custom_id] = verdict_text(result.message.model_dump_json().encode())
                elif result.type == "errored":
                    out[entry.custom_id] = Failed(False, f"batch error: {str(result.error)[:200]}")
                else:
                    out[entry.custom_id] = None
        return out


def verdict_text(raw: bytes) -> str:
    """The verdict tool's input as JSON text, else the reply's text; "" (malformed) for a reply
    cut off at max_tokens or one that is not a Messages API answer."""
    try:
        message = json.loads(raw)
        if message.get("stop_reason") == "max_tokens":
            return ""  # cut off: the verdicts may be missing or a draft
        blocks = [b for b in message["content"] if isinstance(b, dict)]
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return ""
    calls = [b.get("input") for b in blocks if b.get("type") == "tool_use" and b.get("name") == TOOL]
    if calls:
        return json.dumps(calls[-1])
    return "\n".join(b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str))
