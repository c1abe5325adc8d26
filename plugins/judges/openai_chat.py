"""LLMJudge's ``openai`` backend: ``{base_url}/chat/completions`` through the openai SDK, for
any OpenAI-compatible server (vLLM, SGLang, llama.cpp, OpenAI).

The reply is constrained by the exact-n-verdicts JSON schema where the server takes it; a
server that answers 400 to that is asked with an open schema, then none, and is not asked
with the stricter one again. A server that wants ``max_completion_tokens`` instead of
``max_tokens`` (OpenAI's reasoning models) is asked so from then on. The reply's raw JSON
is read tolerantly (``_content``): an unreadable or cut-off answer is malformed, never an
exception. Redirects are not followed, and the key goes in each request's header, never
into the client.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from nsa.plugins.judges.remote import Failed, Rejected, Transient, no_answer, status_error
from nsa.plugins.judges.verdicts import schema

log = logging.getLogger("nsa.plugins.judges.llm")  # one logger for all of LLMJudge's notices


class OpenAIChat:
    """Posts one prompt and returns the reply's text; raises remote.Transient, Rejected or NSAError."""

    def __init__(
        self, base_url: str, model: str, timeout_s: float, max_tokens: int, temperature: float, structured: bool
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.schema_level = 2 if structured else 0  # 2 the exact schema (n verdicts numbered 1..n), 1 open, 0 none
        self.token_field = "max_tokens"
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """One client per judge, made on first use: its connections are reused across requests."""
        import openai

        with self._lock:
            if self._client is None:
                self._client = openai.OpenAI(
                    api_key="sent-per-request",  # each request sets or omits the Authorization header
                    base_url=self.base_url,
                    timeout=self.timeout_s,
                    max_retries=0,  # remote.with_retries retries, and counts
                    http_client=openai.DefaultHttpxClient(follow_redirects=False),
                )
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def post(self, prompt: str, num_steps: int, key: str | None) -> str:
        """Posts with the strictest schema the server has not refused, stepping down on HTTP 400."""
        level = self.schema_level
        while True:
            try:
                reply = self._post(prompt, num_steps, key, level)
                break
            except Rejected as err:
                if err.status != 400:
                    raise
                if self._wants_other_token_field(err):
                    continue  # the same schema, the other field
                if level == 0:
                    raise
                level -= 1
        if level < self.schema_level:
            what = ["no response_format", "an open JSON schema", "the exact schema"][level]
            log.warning("LLMJudge: %s refused a stricter response_format; sending %s", self.base_url, what)
            self.schema_level = level
        return reply

    def _wants_other_token_field(self, err: Rejected) -> bool:
        """OpenAI's reasoning models refuse ``max_tokens`` and name ``max_completion_tokens``: switch, once."""
        if self.token_field == "max_tokens" and "max_completion_tokens" in str(err):
            self.token_field = "max_completion_tokens"
            return True
        return False

    def body(self, prompt: str, level: int, num_steps: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": prompt}],
            self.token_field: self.max_tokens,
            "temperature": self.temperature,
        }
        if level:
            exact = schema(num_steps if level == 2 else None)
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "step_verdicts", "strict": True, "schema": exact},
            }
        return body

    def _post(self, prompt: str, num_steps: int, key: str | None, level: int) -> str:
        import openai

        auth = f"Bearer {key}" if key else openai.omit
        # some servers serve one model and take no name
        model = self.model or openai.omit
        try:
            raw = self.client().chat.completions.with_raw_response.create(
                model=model, extra_headers={"Authorization": auth}, **self.body(prompt, level, num_steps)
            )
        except openai.APITimeoutError:
            raise Transient(f"no reply within {self.timeout_s} s") from None
        except openai.APIConnectionError as err:
            raise no_answer(err) from None
        except openai.APIStatusError as err:
            raise status_error(self.base_url, err.status_code, err.response.headers, err.body) from None
        return _content(raw.http_response.content)

    # ---------------------------------------------------------------- the Batch API (batches.py)

    def submit(self, requests: dict[str, tuple[str, int]], key: str | None) -> str:
        """Uploads the requests as one JSONL file and starts a batch over it; its id."""
        lines = [
            json.dumps(
                {
                    "custom_id": cid,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": self.model, **self.body(prompt, self.schema_level, num_steps)},
                }
            )
            for cid, (prompt, num_steps) in requests.items()
        ]
        auth = self._auth(key)
        client = self.client()
        upload = client.files.create(file=("nsa-judge.jsonl", "\n".join(lines).encode()), purpose="batch", **auth)
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", **auth
        )
        return batch.id

    def poll(self, batch_id: str, key: str | None) -> tuple[bool, int]:
        batch = self.client().batches.retrieve(batch_id, **self._auth(key))
        counts = batch.request_counts
        done = (counts.completed + counts.failed) if counts else 0
        return batch.status in ("completed", "failed", "expired", "cancelled"), done

    def results(self, batch_id: str, key: str | None) -> dict[str, str | Failed | None]:
        """Each request's reply text (read as an online reply is), a Failed for an error the server
        gave it, None for one never processed (the batch expired or was cancelled first)."""
        client = self.client()
        batch = client.batches.retrieve(batch_id, **self._auth(key))
        out: dict[str, str | Failed | None] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in client.files.content(file_id, **self._auth(key)).text.splitlines():
                cid, reply = _batch_line(line)
                if cid is not None:
                    out[cid] = reply
        return out

    def _auth(self, key: str | None) -> dict[str, Any]:
        import openai

        return {"extra_headers": {"Authorization": f"Bearer {key}" if key else openai.omit}}


def _batch_line(line: str) -> tuple[str | None, str | Failed | None]:
    """One line of a batch's output or error file: (custom id, reply text / Failed / None if expired)."""
    try:
        entry = json.loads(line)
        cid = entry["custom_id"]
    except (ValueError, KeyError, TypeError):
        return None, None
    response, error = entry.get("response") or {}, entry.get("error") or {}
    if response.get("status_code") == 200:
        return cid, _content(json.dumps(response.get("body")).encode())
    code = str(error.get("code") or response.get("status_code"))
    if "expired" in code or "cancel" in code:
        return cid, None
    return cid, Failed(False, f"batch error {code}: {str(error.get('message', ''))[:200]}")


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
