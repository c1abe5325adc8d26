"""PRMJudge on tiny random models of each convention's architecture, built locally (no hub).

Each score is checked against a reference forward run here on ids built the way the model
card (or TRL) builds them, with the positions picked by hand.

The ``qwen-prm`` model is a stand-in: Qwen2.5-Math-PRM is remote code
(``Qwen2ForProcessRewardModel``) that cannot be fetched offline, so a tiny
``LlamaForTokenClassification(num_labels=2)`` plays it, with ``<extra_0>`` as a special
token and a ChatML-like template. Without ``trust_remote_code`` the judge loads it through
``AutoModelForTokenClassification``, the same code path a local token-classification PRM uses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nsa.contracts import StepItem, StepJudge
from nsa.errors import NSAError
from nsa.plugins.judges.prm import QWEN_SYSTEM, PRMJudge
from tests.tiny import build_model, build_tokenizer, tiny_config

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build(
    folder: Path, kind: str, special: tuple[str, ...] = (), tokens: tuple[str, ...] = (), template: str | None = None
):
    """A tiny random 2-layer Llama of ``kind`` ('causal' or 'token') with the given extra tokens."""
    from transformers import LlamaForCausalLM, LlamaForTokenClassification

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": list(special)})
    tokenizer.add_tokens(list(tokens))
    if template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = tiny_config(tokenizer, max_position_embeddings=1024)
    (LlamaForCausalLM if kind == "causal" else LlamaForTokenClassification)(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("prm")
    return {
        "token-classification": build(root / "tc", "token"),
        "qwen-prm": build(root / "qwen", "token", special=("<extra_0>",), template=CHAT_TEMPLATE),
        "math-shepherd": build(root / "shepherd", "causal", tokens=("ки",)),
    }


def item(question: str, steps: list[str]) -> StepItem:
    """An answer whose spans tile the text; steps are joined by a blank line inside the spans."""
    response, spans = "", []
    for k, step in enumerate(steps):
        text = step + ("\n\n" if k < len(steps) - 1 else "")
        spans.append((len(response), len(response) + len(text)))
        response += text
    return StepItem(question, response, spans)


ITEMS = [
    item("Tom has 12 boxes of 7 apples. He eats 15. How many are left?", ["12 * 7 = 84", "84 - 15 = 69", "69"]),
    item("What is 3 + 4?", ["3 + 4 = 7"]),
    item("Sara reads 5 pages a day for 6 days. How many pages?", ["5 * 6 = 30", "She reads 30.", "\\boxed{30}", "ok"]),
]


def reference(convention: str, folder: str, it: StepItem) -> list[float]:
    """Scores by hand: ids as the model card / TRL builds them, the model run directly."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    steps = [it.response[s:e].strip() for s, e in it.spans]
    if convention == "qwen-prm":
        messages = [
            {"role": "system", "content": QWEN_SYSTEM},
            {"role": "user", "content": it.question},
            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
        ]
        ids = tok.encode(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
        positions = [i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids("<extra_0>")]
    elif convention == "math-shepherd":
        # the card: f"{question} {output}", output = "Step 1: ... ки\nStep 2: ... ки"
        ids = tok.encode(f"{it.question} " + "\n".join(s + " ки" for s in steps), add_special_tokens=False)
        positions = [i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids("ки")]
    else:  # TRL PRMTrainer: [BOS] + prompt ids, then each step's ids + "\n"'s; label on the last
        ids = [] if tok.bos_token_id is None else [tok.bos_token_id]
        ids += tok.encode(it.question, add_special_tokens=False)
        positions = []
        for s in steps:
            ids += tok.encode(s, add_special_tokens=False) + tok.encode("\n", add_special_tokens=False)
            positions.append(len(ids) - 1)
    auto = AutoModelForCausalLM if convention == "math-shepherd" else AutoModelForTokenClassification
    model = auto.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, positions]  # (S, C)
    if convention == "math-shepherd":
        plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
        return logits[:, [plus, minus]].softmax(-1)[:, 0].tolist()
    return logits.softmax(-1)[:, 1].tolist()


def count_forwards(judge: PRMJudge) -> list[int]:
    """Loads the judge's model and counts its forward calls."""
    judge._load()
    calls = [0]
    judge._model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


CONVENTIONS = ["token-classification", "qwen-prm", "math-shepherd"]


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_scores_match_reference_in_one_forward(models, convention):
    judge = PRMJudge(models[convention], convention=convention, device="cpu")
    calls = count_forwards(judge)
    scores = judge.score(ITEMS)
    assert calls[0] == 1  # every step of every answer in one batch, one forward
    for it, got in zip(ITEMS, scores, strict=True):
        assert len(got) == len(it.spans)
        assert all(0.0 <= s <= 1.0 for s in got)
        assert got == pytest.approx(reference(convention, models[convention], it), abs=1e-5)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_threshold_does_not_change_scores(models, convention):
    low = PRMJudge(models[convention], convention=convention, threshold=0.1).score(ITEMS)
    high = PRMJudge(models[convention], convention=convention, threshold=0.9).score(ITEMS)
    assert low == high  # same model, same inputs: bit-identical


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_token_budget_batching_gives_same_scores(models, convention):
    together = PRMJudge(models[convention], convention=convention).score(ITEMS)
    judge = PRMJudge(models[convention], convention=convention, tokens_per_batch=1)
    calls = count_forwards(judge)
    alone = judge.score(ITEMS)
    assert calls[0] == len(ITEMS)
    for a, b in zip(together, alone, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_long_answer_scores_the_prefix_and_counts_the_rest(models, convention):
    it = ITEMS[2]
    full = PRMJudge(models[convention], convention=convention)
    [full_scores] = full.score([it])
    positions = full._encode(it).positions
    judge = PRMJudge(models[convention], convention=convention, max_length=positions[1] + 1)
    [scores] = judge.score([it])
    assert scores[:2] == pytest.approx(full_scores[:2], abs=1e-5)
    assert scores[2:] == [None, None]
    assert judge._truncated_steps == 2


def test_an_unknown_convention_is_a_one_line_error_naming_the_known_ones():
    with pytest.raises(NSAError, match=r"unknown convention 'qwen'; use one of: ") as err:
        PRMJudge("unused", convention="qwen")
    line = str(err.value)
    assert all(name in line for name in CONVENTIONS) and "\n" not in line


@pytest.mark.parametrize(
    ("convention", "model", "options"),
    [
        ("qwen-prm", "token-classification", {}),  # no <extra_0> in this tokenizer
        ("math-shepherd", "token-classification", {}),  # no ки tag
        ("math-shepherd", "math-shepherd", {"positive_token": "good"}),  # not one token
    ],
)
def test_missing_marker_is_a_one_line_error(models, convention, model, options):
    judge = PRMJudge(models[model], convention=convention, **options)
    with pytest.raises(NSAError, match=r"no single token .* set the judge's \w+ option"):
        judge.score(ITEMS)


def test_a_marker_that_merges_in_context_is_a_one_line_error(models):
    """'ally' is one token alone, but after the space Math-Shepherd puts before its tag the
    tiny BPE splits it as ' a' + 'lly': no token is the marker's own, so no step could be
    scored. Caught when the model loads, not after judging a whole shard as unjudged."""
    judge = PRMJudge(models["math-shepherd"], convention="math-shepherd", step_marker="ally")
    with pytest.raises(NSAError, match=r"step marker 'ally' merges with the text around it") as err:
        judge.score(ITEMS)
    assert "\n" not in str(err.value)


def test_empty_steps_and_empty_input(models):
    judge = PRMJudge(models["qwen-prm"], convention="qwen-prm")
    assert judge.score([]) == []
    assert judge.score([StepItem("q", "", [])]) == [[]]
    scores = judge.score([StepItem("q", "", []), ITEMS[1]])
    assert scores[0] == [] and len(scores[1]) == 1


def test_token_classification_with_separator(models):
    """With TRL's step separator the label is read at the separator after each step."""
    judge = PRMJudge(models["token-classification"], convention="token-classification", step_marker="\n")
    [scores] = judge.score([ITEMS[0]])
    enc = judge._encode(ITEMS[0])
    newline = judge._tokenizer.encode("\n", add_special_tokens=False)[-1]
    assert [enc.ids[p] for p in enc.positions] == [newline] * 3
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)


def test_token_classification_follows_trl_bos_and_separator(models):
    """TRL prepends the BOS whenever the tokenizer has one (even one it would not add itself)
    and ends each step with the default separator "\n"; "" means no separator."""
    judge = PRMJudge(models["token-classification"], convention="token-classification")
    judge._load()
    judge._tokenizer.bos_token = "<|endoftext|>"
    bos, newline = judge._tokenizer.bos_token_id, judge._tokenizer.encode("\n", add_special_tokens=False)
    enc = judge._encode(ITEMS[1])
    assert enc.ids[0] == bos and enc.ids[-len(newline) :] == newline and enc.positions == [len(enc.ids) - 1]
    bare = PRMJudge(models["token-classification"], convention="token-classification", step_marker="")
    bare._load()
    step = bare._tokenizer.encode("3 + 4 = 7", add_special_tokens=False)
    assert bare._encode(ITEMS[1]).ids[-len(step) :] == step


def test_qwen_prm_without_chat_template_uses_plain_text(models):
    judge = PRMJudge(models["qwen-prm"], convention="qwen-prm")
    judge._load()
    judge._tokenizer.chat_template = None
    assert judge._frame("Q?") == ("Q?\n\n", "", "")
    assert len(judge.score([ITEMS[0]])[0]) == 3


def test_is_a_step_judge():
    from jsonargparse._typehints import implements_protocol

    assert implements_protocol(PRMJudge, StepJudge)


def test_a_missing_head_is_an_error_not_noise(tmp_path):
    """A base model without a classification head would get a random one from transformers:
    for Qwen2.5-Math-PRM loaded without its remote code that is exactly what happens."""
    folder = build_model(tmp_path / "headless", head="LlamaModel", num_hidden_layers=1)
    judge = PRMJudge(str(folder), convention="token-classification")
    with pytest.raises(NSAError, match="trust_remote_code"):
        judge.score([StepItem("q", "a\n\nb", [(0, 3), (3, 4)])])


def build_sentencepiece_style(folder: Path) -> str:
    """A tiny Llama whose tokenizer works like Mistral's (Math-Shepherd's base): Metaspace, a
    word-start mark on every text it encodes, so a piece tokenised alone differs from the same
    piece inside the whole string."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from tests.tiny import corpus

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    texts = corpus() + ["\u043a\u0438 + -"] * 500  # so that "▁ки", "▁+" and "▁-" become tokens
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    folder.mkdir(parents=True)
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config(fast)).save_pretrained(folder)
    return str(folder)


def test_math_shepherd_ids_are_the_cards_on_a_sentencepiece_tokenizer(tmp_path):
    """The card encodes f"{question} {output}" whole, output = "step ки\\nstep ки..."; on a
    Metaspace tokenizer, tokenising the pieces apart would give other ids (checked here)."""
    from transformers import AutoTokenizer

    folder = build_sentencepiece_style(tmp_path / "sp")
    tok = AutoTokenizer.from_pretrained(folder)
    judge = PRMJudge(folder, convention="math-shepherd")
    judge._load()
    tag = tok.convert_ids_to_tokens(judge._marker_ids)[0]
    assert tag == "\u2581\u043a\u0438"  # "▁ки": the tag's word-start form, as the card's encode("ки")[-1]
    for it in ITEMS:
        steps = [it.response[s:e].strip() for s, e in it.spans]
        card = tok.encode(f"{it.question} " + "\n".join(s + " \u043a\u0438" for s in steps), add_special_tokens=False)
        pieces = tok.encode(f"{it.question} ", add_special_tokens=False)
        for k, s in enumerate(steps):
            pieces += tok.encode(("\n" if k else "") + s + " \u043a\u0438", add_special_tokens=False)
        enc = judge._encode(it)
        assert enc.ids == card and pieces != card
        assert [enc.ids[p] for p in enc.positions] == judge._marker_ids * len(steps)
    assert judge.stats() == {"truncated_steps": 0, "unmarked_steps": 0}
