"""LLMJudge's anthropic backend: the real anthropic SDK against a test-owned server on 127.0.0.1
that speaks the Messages API as documented (a tool_use content block for a forced tool,
``stop_reason``, Anthropic's error body, 429 and 529 with Retry-After). Claude itself cannot
run here: the server answers as Claude would, with the verdicts the test chose."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nsa.errors import NSAError
from nsa.plugins.judges.anthropic_messages import TOOL
from nsa.plugins.judges.llm import LLMJudge
from nsa.stages.cache import describe
from tests.plugins.test_llm_judge import item, verdicts_for

KEY = "NSA_TEST_ANTHROPIC_KEY"


class FakeAnthropic:
    """``POST /v1/messages``; ``modes`` is the behaviour of each request in turn (the last one repeats)."""

    def __init__(self) -> None:
        self.modes = ["tool"]
        self.requests: list[tuple[dict, dict]] = []  # (headers, body)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def mode(self) -> str:
        return self.modes[min(len(self.requests), len(self.modes)) - 1]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status, payload, headers = fake.answer(self.path, body)
                if payload is None:
                    return  # drop the connection without an answer
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def answer(self, path: str, body: dict) -> tuple[int, dict | None, dict]:
        mode = self.mode()
        if path != "/v1/messages":
            return 404, error("not_found_error", f"no route {path}"), {}
        if mode in ("429", "529"):
            kind = "rate_limit_error" if mode == "429" else "overloaded_error"
            return int(mode), error(kind, "slow down"), {"retry-after": "0"}
        if mode == "401":
            return 401, error("authentication_error", "invalid x-api-key"), {}
        if mode == "drop":
            return 200, None, {}
        verdicts = verdicts_for(body["messages"][0]["content"])
        entries = [{"step": k, "correct": v} for k, v in enumerate(verdicts, 1)]
        blocks = {
            "tool": [tool_use({"verdicts": entries})],
            "wrong_length": [tool_use({"verdicts": [*entries, {"step": len(entries) + 1, "correct": True}]})],
            "malformed_tool": [tool_use({"verdicts": "all fine"})],
            "thinking_text": [
                {"type": "thinking", "thinking": "Step 2 slips.", "signature": "sig"},
                {"type": "text", "text": f"Verdicts:\n{json.dumps({'verdicts': entries})}"},
            ],
        }
        stop = "max_tokens" if mode == "max_tokens" else "tool_use"
        return 200, message(blocks.get(mode, blocks["tool"]), stop), {}

    def __enter__(self) -> FakeAnthropic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def error(kind: str, text: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": text}}


def tool_use(arguments: dict) -> dict:
    return {"type": "tool_use", "id": "toolu_01", "name": TOOL, "input": arguments}


def message(content: list[dict], stop: str) -> dict:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-7-sonnet-20250219",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 10},
    }


@pytest.fixture
def server():
    with FakeAnthropic() as fake:
        yield fake


def claude(server: FakeAnthropic, **kwargs) -> LLMJudge:
    defaults = {"backend": "anthropic", "model": "claude-3-7-sonnet-20250219", "base_url": server.url}
    return LLMJudge(**{**defaults, "retries": 2, "backoff_s": 0.01, "timeout_s": 5.0, **kwargs})


ITEMS = [item("12 * 7 = 84", "84 - 15 = 70 WRONG", "The answer is 70 WRONG"), item("Only step")]


def test_the_verdicts_come_through_a_forced_tool_with_the_exact_schema(server, monkeypatch):
    monkeypatch.setenv(KEY, "sk-ant-secret")
    judge = claude(server, api_key_env=KEY, max_tokens=4096)
    assert judge.score(ITEMS) == [[1.0, 0.0, 0.0], [1.0]]
    headers, body = next(r for r in server.requests if "Only step" not in r[1]["messages"][0]["content"])
    assert headers["authorization"] == "Bearer sk-ant-secret" and "anthropic-version" in headers
    assert "sent-per-request" not in json.dumps(headers)  # the client's placeholder never goes out
    assert body["model"] == "claude-3-7-sonnet-20250219" and body["max_tokens"] == 4096 and "temperature" not in body
    assert body["tool_choice"] == {"type": "tool", "name": TOOL} and "thinking" not in body
    [tool] = body["tools"]
    verdicts = tool["input_schema"]["properties"]["verdicts"]
    assert tool["name"] == TOOL and verdicts["minItems"] == verdicts["maxItems"] == 3
    assert judge.stats() == {
        "requests": 2,
        "failed": 0,
        "malformed": 0,
        "wrong_length": 0,
        "unjudged_steps": 0,
        "retries": 0,
    }


def test_extended_thinking_offers_the_tool_and_reads_a_text_answer(server):
    server.modes = ["thinking_text"]
    judge = claude(server, max_tokens=8192, thinking_tokens=2048)
    assert judge.score(ITEMS[:1]) == [[1.0, 0.0, 0.0]]
    body = server.requests[0][1]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["tool_choice"] == {"type": "auto"}


@pytest.mark.parametrize("status", ["429", "529"])
def test_rate_limits_and_overload_are_retried_and_counted(server, status):
    server.modes = [status, "tool"]
    judge = claude(server)
    assert judge.score(ITEMS[:1]) == [[1.0, 0.0, 0.0]]
    assert len(server.requests) == 2 and judge.stats()["retries"] == 1


@pytest.mark.parametrize(
    ("mode", "counter"),
    [("wrong_length", "wrong_length"), ("malformed_tool", "malformed"), ("max_tokens", "malformed")],
)
def test_a_bad_tool_call_or_a_cut_off_reply_is_unjudged_and_counted(server, mode, counter):
    server.modes = [mode]
    judge = claude(server)
    assert judge.score(ITEMS[:1]) == [[None, None, None]]
    assert judge.stats()[counter] == 1 and judge.stats()["unjudged_steps"] == 3


def test_a_dropped_connection_is_retried(server):
    server.modes = ["drop", "tool"]
    judge = claude(server)
    assert judge.score(ITEMS[:1]) == [[1.0, 0.0, 0.0]]
    assert judge.stats()["retries"] == 1


def test_a_bad_key_stops_the_run_in_one_line(server):
    server.modes = ["401"]
    with pytest.raises(NSAError, match=r"answered HTTP 401 unauthorised \(check the API key\): invalid x-api-key"):
        claude(server).score(ITEMS[:1])


def test_the_real_api_needs_a_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    judge = LLMJudge(backend="anthropic", model="claude-3-7-sonnet-20250219")
    assert judge.base_url == "https://api.anthropic.com"
    with pytest.raises(NSAError, match="needs an API key for https://api.anthropic.com: set .* ANTHROPIC_API_KEY"):
        judge.score(ITEMS[:1])


@pytest.mark.parametrize(("thinking", "max_tokens"), [(512, 4096), (4096, 4096)])
def test_a_thinking_budget_the_api_refuses_is_refused_at_once(thinking, max_tokens):
    with pytest.raises(NSAError, match=f"thinking_tokens is {thinking}: .* at least 1024"):
        LLMJudge(backend="anthropic", model="claude", thinking_tokens=thinking, max_tokens=max_tokens)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"backend": "anthropic", "temperature": 0.7}, "the Messages API (anthropic SDK 2.x) takes none"),
        ({"backend": "openai", "thinking_tokens": 2048}, "is for backend 'anthropic', not 'openai'"),
        ({"backend": "anthropic", "model": ""}, "backend 'anthropic' needs model: a Claude model name"),
    ],
)
def test_settings_the_backend_cannot_honour_are_refused(kwargs, needle):
    with pytest.raises(NSAError, match=re.escape(needle)):
        LLMJudge(**{"model": "claude", "max_tokens": 8192, **kwargs})


def test_the_openai_judges_identity_is_unchanged():
    """The cached verdicts of every existing openai judge stay valid: no new public attribute."""
    keys = set(describe(LLMJudge(model="judge")))
    assert keys == {
        "class",
        "backend",
        "model",
        "model_files",
        "base_url",
        "prompt_sha",
        "max_tokens",
        "temperature",
        "structured_output",
        "threshold",
    }
    assert describe(LLMJudge(model="judge"))["base_url"] == "http://127.0.0.1:8000/v1"
    anthropic = describe(LLMJudge(backend="anthropic", model="claude", thinking_tokens=2048, max_tokens=8192))
    assert anthropic["thinking_tokens"] == 2048 and anthropic["base_url"] == "https://api.anthropic.com"
