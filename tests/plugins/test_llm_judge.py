"""LLMJudge against a real local HTTP server (stdlib), a reply parser fed hostile text, and a tiny HF model."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nsa.contracts import StepItem, StepJudge
from nsa.errors import NSAError
from nsa.plugins.judges.llm import LLMJudge, parse_verdicts


def item(*steps: str, question: str = "What is 12 * 7 - 15?") -> StepItem:
    """An answer whose steps are the given texts, joined by blank lines."""
    response, spans = "", []
    for text in steps:
        start = len(response)
        response += text
        spans.append((start, len(response)))
        response += "\n\n"
    return StepItem(question, response, spans)


# ------------------------------------------------------------------------ fake server


def verdicts_for(prompt: str) -> list[bool]:
    """What the fake judge says: a step is wrong when its text contains WRONG."""
    steps = re.split(r"^\[Step \d+\]\n", prompt, flags=re.MULTILINE)[1:]
    return ["WRONG" not in step.split("## Error taxonomy")[0] for step in steps]


def good_reply(prompt: str, extra: int = 0) -> str:
    verdicts = verdicts_for(prompt) + [True] * extra
    return json.dumps({"verdicts": [{"step": k, "correct": v} for k, v in enumerate(verdicts, 1)]})


class FakeServer:
    """A /v1/chat/completions endpoint whose behaviour the test picks with ``mode``."""

    def __init__(self) -> None:
        self.mode = "good"
        self.redirect_to = ""  # where mode "redirect" points
        self.requests: list[tuple[dict, dict]] = []  # (headers, body) per request received
        self.stop = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # only a followed redirect would ask this
                server.requests.append(({k.lower(): v for k, v in self.headers.items()}, {}))
                self._send(200, "[true]")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                first = len(server.requests) == 1
                if server.mode == "bad_status_once" and first:
                    self.wfile.write(b"NOT-HTTP garbage\r\n\r\n")
                    return
                if server.mode == "incomplete_once" and first:
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [')  # then close: IncompleteRead on the client
                    return
                if server.mode == "retry_after_once" and first:
                    self._send(429, "", {"Retry-After": "1"})
                    return
                if server.mode == "reasoning_model" and "max_tokens" in body:  # as OpenAI answers for o-series models
                    said = "Unsupported parameter: 'max_tokens' is not supported. Use 'max_completion_tokens'"
                    error = json.dumps({"error": {"message": said, "type": "invalid_request_error"}}).encode()
                    self.send_response(400)
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                if server.mode == "redirect":
                    self._send(302, "", {"Location": server.redirect_to + "/chat/completions"})
                    return
                status, text = server.answer(self.path, body)
                finish = "length" if server.mode == "length" else "stop"
                self._send(status, text, finish=finish)

            def _send(self, status: int, text: str | None, headers: dict | None = None, finish: str = "stop") -> None:
                if text is None:
                    return  # drop the connection without an answer
                choice = {"message": {"role": "assistant", "content": text}, "finish_reason": finish}
                payload = json.dumps({"choices": [choice]})
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload.encode())
                except OSError:
                    pass  # the client gave up (timeout test)

        return Handler

    def answer(self, path: str, body: dict) -> tuple[int, str | None]:
        prompt = body["messages"][0]["content"]
        if path != "/v1/chat/completions":
            return 404, ""
        if self.mode == "flaky" and len(self.requests) == 1:
            return 500, ""
        if self.mode == "no_schema" and "response_format" in body:
            return 400, ""
        if self.mode == "no_bounds" and "minItems" in json.dumps(body.get("response_format", {})):
            return 400, ""  # like an API whose strict mode has no array-length constraints
        if self.mode == "slow":
            self.stop.wait(2.0)
        if self.mode == "drop" and "DROP" in prompt:
            return 200, None
        replies = {
            "fenced": f"Let me check each step.\n```json\n{good_reply(prompt)}\n```\nDone.",
            "malformed": "I think the solution is mostly fine {but not sure]",
            "wrong_length": good_reply(prompt, extra=1),
        }
        return 200, replies.get(self.mode, good_reply(prompt))

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    with FakeServer() as fake:
        yield fake


def judge(server: FakeServer, **kwargs) -> LLMJudge:
    defaults = {"base_url": server.url, "model": "judge", "retries": 2, "timeout_s": 5.0, "backoff_s": 0.01}
    return LLMJudge(**{**defaults, **kwargs})


# ------------------------------------------------------------------------------ tests


def test_implements_protocol():
    from jsonargparse._typehints import implements_protocol

    assert implements_protocol(LLMJudge, StepJudge)
    assert isinstance(LLMJudge(), StepJudge)


def test_good_replies_label_each_step_and_request_carries_prompt(server, monkeypatch):
    monkeypatch.setenv("NSA_TEST_JUDGE_KEY", "sk-secret-123")
    j = judge(server, api_key_env="NSA_TEST_JUDGE_KEY", concurrency=3)
    items = [item("12 * 7 = 84", "84 - 15 = 70 WRONG", "The answer is 70 WRONG"), item("Only step"), item()]
    scores = j.score(items)
    assert scores == [[1.0, 0.0, 0.0], [1.0], []]
    assert len(server.requests) == 2  # the empty answer sends nothing
    headers, body = next(r for r in server.requests if "Only step" not in r[1]["messages"][0]["content"])
    prompt = body["messages"][0]["content"]
    assert "[Step 1]\n12 * 7 = 84" in prompt and "[Step 3]\nThe answer is 70 WRONG" in prompt
    assert "What is 12 * 7 - 15?" in prompt and "exactly\n3 verdicts" in prompt
    assert "Error propagation" in prompt and "Error termination" in prompt
    assert headers["authorization"] == "Bearer sk-secret-123"
    assert body["model"] == "judge" and body["response_format"]["type"] == "json_schema"
    verdicts = body["response_format"]["json_schema"]["schema"]["properties"]["verdicts"]
    assert verdicts["minItems"] == verdicts["maxItems"] == 3  # exactly one verdict per step
    assert verdicts["items"]["properties"]["step"] == {"type": "integer", "minimum": 1, "maximum": 3}
    assert j.stats() == {
        "requests": 2,
        "failed": 0,
        "malformed": 0,
        "wrong_length": 0,
        "unjudged_steps": 0,
        "retries": 0,
    }


def test_key_value_not_in_identity(server, monkeypatch):
    monkeypatch.setenv("NSA_TEST_JUDGE_KEY", "sk-secret-123")
    j = judge(server, api_key_env="NSA_TEST_JUDGE_KEY")
    j.score([item("a")])
    public = {k: v for k, v in vars(j).items() if not k.startswith("_")}
    assert "sk-secret-123" not in repr(public) and "sk-secret-123" not in repr(vars(j))
    assert set(public) >= {"backend", "model", "base_url", "prompt_sha", "threshold"}


def test_pickles_without_its_lock(server):
    import pickle

    j = pickle.loads(pickle.dumps(judge(server)))
    assert j.score([item("a WRONG")]) == [[0.0]] and j.stats()["requests"] == 1


def test_no_key_on_localhost_means_no_header(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert judge(server).score([item("a")]) == [[1.0]]
    assert "authorization" not in server.requests[0][0]


def test_missing_key_for_remote_server_is_a_user_error(monkeypatch):
    monkeypatch.delenv("NSA_TEST_JUDGE_KEY", raising=False)
    j = LLMJudge(base_url="https://judge.example.com/v1", api_key_env="NSA_TEST_JUDGE_KEY")
    with pytest.raises(NSAError, match="NSA_TEST_JUDGE_KEY"):
        j.score([item("a")])


def test_fenced_json_with_prose(server):
    server.mode = "fenced"
    assert judge(server).score([item("ok", "bad WRONG")]) == [[1.0, 0.0]]


@pytest.mark.parametrize(("mode", "counter"), [("malformed", "malformed"), ("wrong_length", "wrong_length")])
def test_bad_replies_are_unjudged_and_counted(server, mode, counter):
    server.mode = mode
    j = judge(server)
    assert j.score([item("a", "b"), item("c")]) == [[None, None], [None]]
    stats = j.stats()
    assert stats[counter] == 2 and stats["unjudged_steps"] == 3 and stats["failed"] == 0


def test_slow_reply_times_out_and_is_unjudged(server):
    server.mode = "slow"
    j = judge(server, timeout_s=0.5, retries=0, max_failed_fraction=1.0)
    start = time.monotonic()
    assert j.score([item("a", "b")]) == [[None, None]]
    assert time.monotonic() - start < 1.8
    assert j.stats()["failed"] == 1 and j.stats()["unjudged_steps"] == 2


def test_http_500_is_retried(server):
    server.mode = "flaky"
    j = judge(server)
    assert j.score([item("a", "b WRONG")]) == [[1.0, 0.0]]
    assert len(server.requests) == 2 and j.stats()["retries"] == 1 and j.stats()["failed"] == 0


def test_400_for_response_format_falls_back_and_remembers(server):
    server.mode = "no_schema"
    j = judge(server, concurrency=1)
    assert j.score([item("a"), item("b WRONG")]) == [[1.0], [0.0]]
    with_schema = ["response_format" in body for _, body in server.requests]
    assert with_schema == [True, True, False, False]  # exact schema, open schema, then none from then on


def test_a_server_without_array_bounds_keeps_the_open_schema(server):
    """A 400 for the exact schema steps down one level only: structured output stays on."""
    server.mode = "no_bounds"
    j = judge(server, concurrency=1)
    assert j.score([item("a"), item("b WRONG")]) == [[1.0], [0.0]]
    bounded = ["minItems" in json.dumps(body.get("response_format", {})) for _, body in server.requests]
    assert bounded == [True, False, False]
    assert all("response_format" in body for _, body in server.requests)


def test_unreachable_server_is_a_user_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed on exit: nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    j = LLMJudge(base_url=url, retries=1, backoff_s=0.01, timeout_s=2.0)
    with pytest.raises(NSAError, match=re.escape(url)):
        j.score([item("a")])


def test_partial_failure_leaves_only_failed_answers_unjudged(server):
    server.mode = "drop"
    j = judge(server, retries=1)
    assert j.score([item("a DROP"), item("b WRONG")]) == [[None], [0.0]]
    assert j.stats()["failed"] == 1


def test_fatal_status_is_a_user_error(server):
    j = judge(server, base_url=server.url.removesuffix("/v1") + "/wrong")
    with pytest.raises(NSAError, match="404"):
        j.score([item("a")])


def test_prompt_file_changes_identity_and_is_rendered_literally(server, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text('Q: {question}\n{steps}\nReply {"verdicts": [...]} for {num_steps} steps.')
    j = judge(server, prompt_file=str(prompt))
    assert j.prompt_sha != judge(server).prompt_sha
    rendered = j.render(item("x {steps}", question="What is {num_steps}?"))
    assert rendered == 'Q: What is {num_steps}?\n[Step 1]\nx {steps}\nReply {"verdicts": [...]} for 1 steps.'
    (tmp_path / "bad.txt").write_text("no placeholder")
    with pytest.raises(NSAError, match="steps"):
        LLMJudge(prompt_file=str(tmp_path / "bad.txt"))


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"verdicts": [{"step": 2, "correct": false}, {"step": 1, "correct": true}]}', ([True, False], "ok")),
        ("Sure:\n[true, false]", ([True, False], "ok")),
        ('<think>{"verdicts": [true]}</think> [false, false]', ([False, False], "ok")),
        ("Step 1: correct\nStep 2: **incorrect**.", ([True, False], "ok")),
        ("**Step 1:** Right!\n- Step 2 - wrong", ([True, False], "ok")),
        ("Step 1: correct\nStep 2: **incorrect** (calculation error)", (None, "wrong_length")),
        ("Step 1: correct\nStep 2: Correct? No, it is wrong", (None, "wrong_length")),
        ("Step 1: Right triangle, so a^2 + b^2 = c^2\nStep 2: True to form, we add", (None, "malformed")),
        ("Step 1: correct\nStep 2: correct?", (None, "wrong_length")),
        ("<think>draft [true, true]</think> [false, true] <think>no wait", (None, "malformed")),
        ("<think>Step 1: correct\nStep 2: correct\n[true, true]", (None, "malformed")),
        # a list nested inside a verdict entry never wins over the verdict list around it
        (
            '{"verdicts": [{"step": 1, "correct": false, "see": [true, true]}, {"step": 2, "correct": true}]}',
            ([False, True], "ok"),
        ),
        (
            '{"verdicts": [{"step": 1, "correct": true}, {"step": 2, "correct": false, "see": [true, true]}]}',
            ([True, False], "ok"),
        ),
        ('{"verdicts": [false, true], "notes": [true, true]}', ([False, True], "ok")),
        ("Draft: [true, true]\n```json\n[false, true]\n```\nas \\frac{1}{2}", ([False, True], "ok")),
        ("Step 1: correct\nStep 1: incorrect\nStep 2: correct", (None, "malformed")),
        ('{"verdicts": [{"step": 1, "correct": "maybe"}, {"step": 2, "correct": true}]}', (None, "malformed")),
        ('{"verdicts": [{"step": 1, "correct": true}, {"step": 1, "correct": true}]}', (None, "malformed")),
        ("[true]", (None, "wrong_length")),
        ("", (None, "malformed")),
        ("{" * 5000, (None, "malformed")),
        ("[" * 100_000, (None, "malformed")),
        ("```json\n" + "[" * 100_000 + "\n```", (None, "malformed")),
    ],
)
def test_parse_verdicts(reply, expected):
    assert parse_verdicts(reply, 2) == expected


def test_hf_backend_on_random_model_is_unjudged_not_a_crash(tiny_model, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("{question}\n{steps}\nJSON verdicts for {num_steps} steps:")
    j = LLMJudge(backend="hf", model=tiny_model, prompt_file=str(prompt), max_tokens=16)
    assert j.score([item("12 * 7 = 84", "84 - 15 = 69"), item()]) == [[None, None], []]
    assert j.stats()["malformed"] == 1 and j.stats()["unjudged_steps"] == 2


# ------------------------------------------------------------------- review fixes


def latex(braces: int) -> str:
    """Prose with ``braces`` LaTeX braces, none of them JSON."""
    return " ".join(["so \\frac{a}{b} ="] * (braces // 2))


def test_draft_then_many_latex_braces_does_not_hide_the_final_verdict():
    draft = json.dumps({"verdicts": [{"step": k, "correct": True} for k in (1, 2, 3)]})
    reply = f"Draft: {draft}\nChecking again: {latex(780)}\nFinal: [true, false, false]"
    assert reply.count("{") >= 780 + 4
    assert parse_verdicts(reply, 3) == ([True, False, False], "ok")


def test_final_verdict_followed_by_many_latex_braces_is_still_found():
    reply = f"[true, true, true]\n{latex(2000)}\n[true, false, false]\nBecause {latex(2000)}."
    assert parse_verdicts(reply, 3) == ([True, False, False], "ok")


def test_pathological_nesting_is_malformed_and_fast():
    """Fast because the backward scan stops at its work cap (no timed assertion: CI machines are noisy)."""
    from nsa.plugins.judges.verdicts import _last_json_verdicts

    assert parse_verdicts("[true, true] " + "[1," * 60_000, 2) == (None, "malformed")
    # the scan gives up inside the nesting: malformed, never the earlier all-true draft
    nested = "[true, true] " + "[" * 100_000 + " [false, true]"
    assert parse_verdicts(nested, 2) == (None, "malformed")
    assert _last_json_verdicts(nested) == (None, False)  # stopped by _MAX_DECODE_WORK, unfinished


def test_reply_cut_off_at_max_tokens_is_malformed(server):
    server.mode = "length"
    j = judge(server)
    assert j.score([item("a", "b")]) == [[None, None]]
    assert j.stats()["malformed"] == 1 and j.stats()["failed"] == 0


@pytest.mark.parametrize("mode", ["bad_status_once", "incomplete_once"])
def test_broken_http_answer_is_retried(server, mode):
    server.mode = mode
    j = judge(server)
    assert j.score([item("a", "b WRONG")]) == [[1.0, 0.0]]
    assert len(server.requests) == 2 and j.stats()["retries"] == 1 and j.stats()["failed"] == 0


@pytest.mark.parametrize("mode", ["bad_status_once", "incomplete_once"])
def test_broken_http_answer_every_time_fails_the_call_not_the_process(server, mode):
    server.mode = mode
    j = judge(server, retries=0)
    with pytest.raises(NSAError, match="1 of 1 requests"):
        j.score([item("a")])


def test_retry_after_is_honoured(server):
    server.mode = "retry_after_once"
    j = judge(server, backoff_s=0.01)
    start = time.monotonic()
    assert j.score([item("a WRONG")]) == [[0.0]]
    assert time.monotonic() - start >= 0.9 and j.stats()["retries"] == 1


def test_retry_after_parsing_is_capped():
    from nsa.plugins.judges.remote import retry_after as _retry_after

    assert _retry_after({"Retry-After": "3600"}) == 60.0
    assert _retry_after({"Retry-After": "2.5"}) == 2.5
    assert _retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert _retry_after({"Retry-After": "-1"}) is None and _retry_after({}) is None and _retry_after(None) is None


def test_too_many_failures_raise_below_limit_stay_unjudged(server):
    server.mode = "drop"
    items = [item("a DROP"), item("b DROP"), item("c WRONG")]
    with pytest.raises(NSAError, match=r"2 of 3 requests to .* failed .*rerun to resume"):
        judge(server, retries=0).score(items)
    assert judge(server, retries=0, max_failed_fraction=0.7).score(items) == [[None], [None], [0.0]]
    assert judge(server, retries=0).score([item("a DROP"), item("b"), item("c")]) == [[None], [1.0], [1.0]]
    with pytest.raises(NSAError, match="max_failed_fraction"):
        judge(server, max_failed_fraction=1.5)
    assert "max_failed_fraction" not in {k for k in vars(judge(server)) if not k.startswith("_")}


def test_redirect_is_not_followed_and_key_not_resent(server, monkeypatch):
    monkeypatch.setenv("NSA_TEST_JUDGE_KEY", "sk-secret-123")
    with FakeServer() as other:
        server.mode, server.redirect_to = "redirect", other.url
        with pytest.raises(NSAError, match="302"):
            judge(server, api_key_env="NSA_TEST_JUDGE_KEY").score([item("a")])
        assert other.requests == []


def test_key_never_sent_over_plain_http_to_remote_host(monkeypatch):
    monkeypatch.setenv("NSA_TEST_JUDGE_KEY", "sk-secret-123")
    j = LLMJudge(base_url="http://judge.example.com/v1", api_key_env="NSA_TEST_JUDGE_KEY")
    with pytest.raises(NSAError, match="plain http"):
        j.score([item("a")])
    from nsa.plugins.judges.remote import api_key

    assert api_key("https://judge.example.com/v1", "NSA_TEST_JUDGE_KEY") == "sk-secret-123"
    assert api_key("http://[::1]:8000/v1", "NSA_TEST_JUDGE_KEY") == "sk-secret-123"
    monkeypatch.delenv("NSA_TEST_JUDGE_KEY")
    assert api_key("http://judge.example.com/v1", "NSA_TEST_JUDGE_KEY") is None


def test_a_server_that_wants_max_completion_tokens_is_asked_so_from_then_on(server):
    server.mode = "reasoning_model"
    j = judge(server, max_tokens=300)
    assert j.score([item("12 * 7 = 84")]) == [[1.0]]
    assert j.score([item("12 * 7 = 84")]) == [[1.0]]
    fields = [("max_tokens" in body, body.get("max_completion_tokens")) for _, body in server.requests]
    assert fields == [(True, None), (False, 300), (False, 300)]  # one refusal, then the other field
    assert "response_format" in server.requests[-1][1]  # the schema stays
