"""Which prompts a sampler can answer in full (PromptRoom), and which rows overflow a micro-batch.

The end-to-end cases (a question dropped before sampling, all dropped, an evaluation, the
micro-batch warning of a fit) are in test_bad_input.py; these check the rules themselves.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from datasets import Dataset

from nsa.batching import over_budget, plan_epoch
from nsa.contracts import PromptRoom, prompt_room
from nsa.errors import NSAError
from nsa.models import load_tokenizer
from nsa.plugins.samplers.hf_generate import HFSampler
from nsa.plugins.samplers.vllm import VLLMSampler
from nsa.stages.cache import StageOutput
from nsa.stages.problems import MATH_TEMPLATE
from nsa.stages.rollouts import build_prompts, drop_long_prompts
from tests.scripted import ScriptedSampler

# with MATH_TEMPLATE and the tiny tokenizer: 57 tokens each, and 885 for the long one
QUESTIONS = ["What is 2 + 3?", "What is 2 * 3?", " ".join(["What is 12 + 7?"] * 60), "What is 10 * 10?"]


def problems() -> StageOutput:
    ids = [f"q{i}" for i in range(len(QUESTIONS))]
    data = Dataset.from_dict({"id": ids, "question": QUESTIONS, "answer": ["5", "6", "19", "100"]})
    return StageOutput("problems", data, "f00d", Path("problems.jsonl"), {"problems": 4.0})


def test_the_samplers_read_their_room_without_loading_weights(tiny_model):
    """The tiny Llama's config says max_position_embeddings 512; vLLM's max_model_len wins when set."""
    assert prompt_room(HFSampler(max_new_tokens=8), tiny_model) == PromptRoom(512, 8, "max_new_tokens")
    assert prompt_room(VLLMSampler(max_new_tokens=12), tiny_model) == PromptRoom(512, 12, "max_new_tokens")
    capped = VLLMSampler(max_new_tokens=12, max_model_len=100)
    assert prompt_room(capped, tiny_model) == PromptRoom(100, 12, "max_new_tokens", "max_model_len")
    assert prompt_room(ScriptedSampler(), tiny_model) is None  # a sampler without the member: no bound
    assert prompt_room(HFSampler(), "/no/such/model") is None  # a config that cannot be read says nothing


def test_a_prompt_fits_when_a_full_answer_still_fits_after_it():
    room = PromptRoom(512, 8, "max_new_tokens")
    assert room.prompt_tokens == 504 and room.fits(504) and not room.fits(505)
    assert PromptRoom(512, 600, "max_new_tokens").prompt_tokens == 0


def test_the_sampling_key_changes_only_with_the_set_of_prompts(tiny_model, capsys):
    """No bound or no drop: the problems (hence the sample stage's key) are the same object;
    a drop is a new key, the same one for the same drop."""
    tokenizer, source = load_tokenizer(tiny_model), problems()
    lengths = [len(p) for p in build_prompts(tokenizer, QUESTIONS, MATH_TEMPLATE)]
    assert lengths == [57, 57, 885, 57]
    assert drop_long_prompts(source, tokenizer, MATH_TEMPLATE, None, "data.sampler") == (source, 0)
    roomy = PromptRoom(1024, 8, "max_new_tokens")
    assert drop_long_prompts(source, tokenizer, MATH_TEMPLATE, roomy, "data.sampler") == (source, 0)
    assert capsys.readouterr().err == ""
    tight = PromptRoom(512, 8, "max_new_tokens")
    kept, dropped = drop_long_prompts(source, tokenizer, MATH_TEMPLATE, tight, "data.sampler")
    assert dropped == 1 and kept.dataset["id"] == ["q0", "q1", "q3"]
    assert kept.fingerprint != source.fingerprint
    assert drop_long_prompts(source, tokenizer, MATH_TEMPLATE, tight, "data.sampler")[0].fingerprint == kept.fingerprint
    other = PromptRoom(512, 500, "max_new_tokens")  # room for 12 tokens: no prompt fits
    with pytest.raises(NSAError, match=r"all 4 questions of problems have a prompt longer than 12 tokens"):
        drop_long_prompts(source, tokenizer, MATH_TEMPLATE, other, "data.sampler")


def test_the_message_names_the_samplers_own_options(tiny_model, capsys):
    tokenizer, capped = load_tokenizer(tiny_model), PromptRoom(100, 12, "max_new_tokens", "max_model_len")
    drop_long_prompts(problems(), tokenizer, MATH_TEMPLATE, capped, "evaluate.sampler")
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "nsa: warning: problems: dropped 1 of 4 questions (prompts_too_long) whose prompt is longer than 88 tokens "
        "(the context 100 from evaluate.sampler max_model_len minus evaluate.sampler max_new_tokens 12); raise "
        "evaluate.sampler max_model_len, lower evaluate.sampler max_new_tokens or shorten the questions"
    )


@pytest.mark.parametrize("pairs", [False, True])
def test_the_rows_over_budget_are_those_packing_puts_over_it(pairs):
    """A micro-batch's padded size (rows x longest) exceeds the budget exactly when it holds a row
    over_budget names, and then that row (or its pair) is alone in it: batching copes, over budget."""
    rng = random.Random(0)
    lengths = [rng.randint(5, 130) for _ in range(40)]
    positive = [i % 2 == 0 for i in range(40)]
    groups = [f"g{i // 4}" for i in range(40)] if pairs else None
    over = set(over_budget(lengths, 100, pairs))
    assert over == {i for i, n in enumerate(lengths) if n > (50 if pairs else 100)}
    exceeding = 0
    for micro in plan_epoch(lengths, positive, 8, 100, seed=0, groups=groups):
        rows = [s.row for s in micro]
        padded = len(rows) * max(lengths[r] for r in rows)
        assert (padded > 100) == bool(over & set(rows)), (rows, padded)
        if padded > 100:
            exceeding += 1
            assert len(rows) == (2 if pairs else 1)
    assert exceeding
