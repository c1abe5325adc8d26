"""The paper's two judges in the pipeline: a PRM and an LLM judge behind a real HTTP server.

The PRM is a tiny random token-classification model (the TRL convention) built here; the
LLM judge talks to an OpenAI-compatible server on 127.0.0.1 started by the test, which
counts the requests it serves and calls a step wrong when it holds "2 + 3 = 6".

Hand count (tests/core/test_pipeline.py): 6 negatives with 14 steps, of which only the one
"2 + 3 = 6" step of answer a1 to "sum" is wrong for the server: the LLM judge accepts 13.
One request per negative answer: 6 requests.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nsa.commands import NSACLI
from tests.recipe import tiny_recipe
from tests.tiny import build_model


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory) -> str:
    return str(build_model(tmp_path_factory.mktemp("tiny-prm"), seed=1, head="LlamaForTokenClassification"))


class Judge(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][0]["content"]
        Judge.requests.append(prompt)
        steps = re.findall(r"\[Step (\d+)\]\n(.*?)(?=\n\[Step |\n\n## Error taxonomy)", prompt, re.S)
        verdicts = [{"step": int(k), "correct": "2 + 3 = 6" not in text} for k, text in steps]
        body = json.dumps({"choices": [{"message": {"content": json.dumps({"verdicts": verdicts})}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    Judge.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def prepare(recipe, *overrides: str) -> dict[str, float]:
    cli = NSACLI(["--config", str(recipe), *overrides], run=False)
    cli.datamodule.run_stages()
    return cli.datamodule.stats


def test_rule_threshold_and_ablation_changes_call_no_judge_again(tmp_path, tiny_model, tiny_prm, server):
    prm = {
        "class_path": "nsa.plugins.judges.prm.PRMJudge",
        "init_args": {"model": tiny_prm, "convention": "token-classification", "threshold": 0.5},
    }
    llm = {
        "class_path": "nsa.plugins.judges.llm.LLMJudge",
        "init_args": {"backend": "openai", "base_url": server, "concurrency": 2, "structured_output": False},
    }
    recipe = tiny_recipe(tmp_path, tiny_model, judges=[prm, llm])
    stats = prepare(recipe)
    assert len(Judge.requests) == 6 and "Error propagation" in Judge.requests[0]
    assert stats["steps_correct/LLMJudge"] == 13 and stats["steps_unjudged/LLMJudge"] == 0
    assert stats["judge/LLMJudge/requests"] == 6 and stats["judge/LLMJudge/malformed"] == 0
    assert stats["steps_correct/PRMJudge"] + stats["steps_unjudged/PRMJudge"] <= 14
    assert stats["steps_correct/consensus"] <= min(stats["steps_correct/PRMJudge"], 13)

    only_llm = prepare(recipe, "--data.consensus.init_args.judges=[LLMJudge]")
    any_rule = prepare(recipe, "--data.consensus.init_args.rule=any")
    prm["init_args"]["threshold"] = 0.0  # lambda 0: every judged step passes the PRM
    lam0 = prepare(tiny_recipe(tmp_path, tiny_model, judges=[prm, llm]))
    # the LLM judge's 13 less the 4 last steps that state a wrong final answer (test_pipeline.py's count)
    assert only_llm["steps_correct/consensus"] == 9
    assert any_rule["steps_correct/consensus"] >= 9
    assert lam0["steps_correct/PRMJudge"] == 14 and lam0["steps_correct/consensus"] == 9
    assert len(Judge.requests) == 6  # no judge was asked again
    assert len(list((tmp_path / "cache" / "judge").iterdir())) == 2  # each judge scored once
