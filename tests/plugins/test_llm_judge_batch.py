"""LLMJudge(mode="batch"): the real openai and anthropic SDKs against a test-owned server on
127.0.0.1 that speaks both batch APIs as documented (OpenAI: files, batches, output and error
files; Anthropic: message batches and their JSONL results). The server counts what it is sent:
a run killed while it waits on a batch, and run again, submits nothing new."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nsa.plugins.judges.llm import LLMJudge
from tests.plugins.test_llm_judge import good_reply, item, verdicts_for
from tests.plugins.test_llm_judge_anthropic import message, tool_use

REPO = Path(__file__).resolve().parents[2]
ITEMS = [item("12 * 7 = 84", "84 - 15 = 70 WRONG", "The answer is 70 WRONG"), item("Only step"), item("A", "B WRONG")]
EXPECTED = [[1.0, 0.0, 0.0], [1.0], [1.0, 0.0]]


def prompt_of(provider: str, request: dict) -> str:
    body = request["body"] if provider == "openai" else request["params"]
    return body["messages"][0]["content"]


def anthropic_message(prompt: str) -> dict:
    """Claude's answer to one request of a batch: the same message the online server sends."""
    entries = [{"step": k, "correct": v} for k, v in enumerate(verdicts_for(prompt), 1)]
    return message([tool_use({"verdicts": entries})], "tool_use")


class FakeBatches:
    """Both providers' batch endpoints. ``hold``: batches stay in progress; ``expire_after``: a
    batch ends expired after answering that many of its requests; ``error_ids``: custom ids
    answered with an error."""

    def __init__(self) -> None:
        self.hold = False
        self.expire_after: int | None = None
        self.error_ids: set[str] = set()
        self.files: dict[str, list[dict]] = {}
        self.batches: dict[str, list[dict]] = {}  # id: its requests
        self.created: list[int] = []  # the number of requests of each batch created
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                self.reply(*fake.post(self.path, raw))

            def do_GET(self) -> None:
                self.reply(*fake.get(self.path))

            def reply(self, status: int, payload: dict | str) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def post(self, path: str, raw: bytes) -> tuple[int, dict]:
        with self.lock:
            if path == "/v1/files":  # multipart: the JSONL part's lines
                lines = re.findall(rb'^\{"custom_id".*$', raw, flags=re.MULTILINE)
                file_id = f"file-{len(self.files)}"
                self.files[file_id] = [json.loads(line) for line in lines]
                return 200, {"id": file_id, "object": "file", "bytes": len(raw), "created_at": 0,
                             "filename": "nsa-judge.jsonl", "purpose": "batch", "status": "processed"}  # fmt: skip
            body = json.loads(raw)
            if path == "/v1/batches":
                return 200, self.create(self.files[body["input_file_id"]], "openai")
            if path == "/v1/messages/batches":
                return 200, self.create(body["requests"], "anthropic")
        return 404, {"error": {"message": f"no route {path}"}}

    def create(self, requests: list[dict], provider: str) -> dict:
        batch_id = f"batch-{len(self.batches)}"
        self.batches[batch_id] = requests
        self.created.append(len(requests))
        return self.status(batch_id, provider)

    def answered(self, batch_id: str) -> list[dict]:
        requests = self.batches[batch_id]
        return requests if self.expire_after is None else requests[: self.expire_after]

    def status(self, batch_id: str, provider: str) -> dict:
        n, ended = len(self.batches[batch_id]), not self.hold
        done = len(self.answered(batch_id)) if ended else 0
        if provider == "openai":
            status = "in_progress" if not ended else ("expired" if self.expire_after is not None else "completed")
            return {"id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": "f",
                    "completion_window": "24h", "status": status, "created_at": 0,
                    "output_file_id": f"out-{batch_id}" if ended else None,
                    "error_file_id": f"err-{batch_id}" if ended else None,
                    "request_counts": {"total": n, "completed": done, "failed": 0}}  # fmt: skip
        counts = {"processing": n - done, "succeeded": done, "errored": 0, "canceled": 0, "expired": 0}
        return {"id": batch_id, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": counts, "created_at": "2026-12-01T00:00:00Z", "expires_at": "2026-12-02T00:00:00Z",
                "ended_at": None, "archived_at": None, "cancel_initiated_at": None,
                "results_url": f"{self.url}/v1/messages/batches/{batch_id}/results" if ended else None}  # fmt: skip

    def get(self, path: str) -> tuple[int, dict | str]:
        with self.lock:
            if m := re.fullmatch(r"/v1/batches/([\w-]+)", path):
                return 200, self.status(m.group(1), "openai")
            if m := re.fullmatch(r"/v1/files/(out|err)-([\w-]+)/content", path):
                return 200, self.openai_file(m.group(2), errors=m.group(1) == "err")
            if m := re.fullmatch(r"/v1/messages/batches/([\w-]+)", path):
                return 200, self.status(m.group(1), "anthropic")
            if m := re.fullmatch(r"/v1/messages/batches/([\w-]+)/results", path):
                return 200, self.anthropic_results(m.group(1))
        return 404, {"error": {"message": f"no route {path}"}}

    def openai_file(self, batch_id: str, errors: bool) -> str:
        lines = []
        for request in self.answered(batch_id):
            cid, failed = request["custom_id"], request["custom_id"] in self.error_ids
            if failed != errors:
                continue
            message = {"role": "assistant", "content": good_reply(prompt_of("openai", request))}
            answer = {"choices": [{"index": 0, "finish_reason": "stop", "message": message}]}
            body = {"error": {"message": "bad request"}} if failed else answer
            response = {"status_code": 400 if failed else 200, "request_id": "r", "body": body}
            lines.append(json.dumps({"id": f"resp-{cid}", "custom_id": cid, "response": response, "error": None}))
        return "\n".join(lines)

    def anthropic_results(self, batch_id: str) -> str:
        lines = []
        for request in self.answered(batch_id):
            cid = request["custom_id"]
            if cid in self.error_ids:
                error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad request"}}
                result = {"type": "errored", "error": error}
            else:
                result = {"type": "succeeded", "message": anthropic_message(prompt_of("anthropic", request))}
            lines.append(json.dumps({"custom_id": cid, "result": result}))
        return "\n".join(lines)

    def __enter__(self) -> FakeBatches:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    with FakeBatches() as fake:
        yield fake


def settings(server: FakeBatches, provider: str, batch_dir: Path) -> dict:
    base = server.url + ("/v1" if provider == "openai" else "")
    return {"backend": provider, "model": "judge", "base_url": base, "mode": "batch",
            "batch_dir": str(batch_dir), "poll_s": 0.05, "retries": 0}  # fmt: skip


PROVIDERS = ["openai", "anthropic"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_shard_is_one_batch_with_the_verdicts_of_online_judging(server, tmp_path, provider):
    judge = LLMJudge(**settings(server, provider, tmp_path / "batches"))
    assert judge.score(ITEMS) == EXPECTED
    assert server.created == [3] and judge.stats()["requests"] == 3
    again = LLMJudge(**settings(server, provider, tmp_path / "batches"))
    assert again.score(ITEMS) == EXPECTED and server.created == [3]  # the journal has every reply: nothing sent


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_expired_batch_is_resubmitted_for_its_missing_requests_only(server, tmp_path, provider):
    server.expire_after = 1
    judge = LLMJudge(**settings(server, provider, tmp_path / "batches"))
    scores = judge.score(ITEMS[:2])  # 1 of 2 answered per batch: a second batch takes the other
    assert server.created == [2, 1] and scores == EXPECTED[:2]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_request_the_provider_refused_is_unjudged_not_resent(server, tmp_path, provider):
    server.error_ids = {"request-1"}
    judge = LLMJudge(**settings(server, provider, tmp_path / "batches"), max_failed_fraction=1.0)
    assert judge.score(ITEMS) == [EXPECTED[0], [None], EXPECTED[2]]
    assert server.created == [3] and judge.stats()["failed"] == 1


KILLED = """
import sys
from nsa.plugins.judges.llm import LLMJudge
from tests.plugins.test_llm_judge_batch import ITEMS
LLMJudge(**eval(sys.argv[1])).score(ITEMS)
"""


@pytest.mark.multiprocess
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_run_killed_while_it_waits_submits_nothing_again(server, tmp_path, provider):
    """SIGKILL while the batch is in progress (the journal already holds its id); the rerun
    waits on the recorded batch: the server sees one batch in all."""
    server.hold = True
    config = settings(server, provider, tmp_path / "batches")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    waiting = subprocess.Popen([sys.executable, "-c", KILLED, repr(config)], env=env, cwd=REPO)
    deadline = time.monotonic() + 120
    while not (server.created and list((tmp_path / "batches").glob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(waiting.pid, signal.SIGKILL)
    waiting.wait(timeout=30)
    assert server.created == [3]
    server.hold = False
    assert LLMJudge(**config).score(ITEMS) == EXPECTED
    assert server.created == [3]  # 0 new requests submitted


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"backend": "hf", "mode": "batch"}, "mode 'batch' needs backend openai or anthropic and a model, got 'hf'"),
        ({"mode": "batched"}, "needs mode 'online' or 'batch' and poll_s > 0, got 'batched' and 30.0"),
        ({"mode": "batch", "poll_s": 0}, "needs mode 'online' or 'batch' and poll_s > 0, got 'batch' and 0"),
    ],
)
def test_a_batch_setting_that_cannot_work_is_refused(kwargs, needle):
    from nsa.errors import NSAError

    with pytest.raises(NSAError, match=re.escape(needle)):
        LLMJudge(**{"model": "x", **kwargs})


def test_online_and_batch_give_the_same_scores_and_the_same_cache_identity(server, tmp_path):
    """The same replies, one by one or in a batch: the same scores, and a stage cache that does
    not tell them apart (the mode is how requests travel, not what the judge says)."""
    from nsa.stages.cache import describe
    from tests.plugins.test_llm_judge import FakeServer

    batch = LLMJudge(**settings(server, "openai", tmp_path / "batches"))
    with FakeServer() as online_server:
        online = LLMJudge(backend="openai", model="judge", base_url=online_server.url, retries=0)
        assert online.score(ITEMS) == batch.score(ITEMS) == EXPECTED
    assert describe(LLMJudge(model="judge", mode="batch")) == describe(LLMJudge(model="judge"))
