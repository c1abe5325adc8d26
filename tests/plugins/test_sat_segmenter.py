"""SaTSegmenter: the real wtpsplit path on a tiny random SaT model, and the merge policy.

The real SaT weights come only from the Hugging Face hub, so ``split`` runs here on a tiny
randomly initialised model of SaT's architecture (wtpsplit's SubwordXLMForTokenClassification)
with its own small Unigram tokenizer saved as an XLMRobertaTokenizerFast. Its sentence
boundaries are noise; what it exercises is loading, wtpsplit's inference (newline handling,
empty sentences), the mapping back to offsets and the merge policy. Not exercised: the
quality of real SaT boundaries, and loading a real hub checkpoint and the XLM-R tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse._typehints import implements_protocol

from nsa.contracts import Segmenter
from nsa.errors import NSAError
from nsa.plugins.segmenters.sat import SaTSegmenter, _steps_from_sentences
from nsa.stages.steps import check_tiling

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Then we compute x = 2 + 3.",
    "Wait, let me check. So the answer is 5! Héllo wörld ∑ π ≈ 3.14?",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,!?;:()",
]
TEXTS = [
    "One sentence only.",
    "First we add. Then we multiply. The answer is 12.",
    "  Leading and trailing whitespace.  Two sentences here.  \n",
    "Step one.\n\nStep two is longer. It has two sentences.\n\n\nStep three.",
    "Unicode: π ≈ 3.14, ∑ x² = 5. Héllo wörld! 数学很难。 Done.",
    "\n\nStarts with blank lines.\n \t\nAnd a blank line holding spaces.",
    "line one\nline two\nline three",
]


def build_tiny_sat(folder: Path) -> Path:
    """A random 1-layer SaT model plus a 200-piece Unigram tokenizer, saved as a local folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import XLMRobertaTokenizerFast
    from wtpsplit.configs import SubwordXLMConfig
    from wtpsplit.models import SubwordXLMForTokenClassification

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0..4
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(
        CORPUS * 5, UnigramTrainer(vocab_size=200, special_tokens=specials, unk_token="<unk>")
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = XLMRobertaTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", mask_token="<mask>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = SubwordXLMConfig(
        vocab_size=len(fast), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=520, num_labels=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
    )  # fmt: skip
    SubwordXLMForTokenClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_sat(tmp_path_factory: pytest.TempPathFactory) -> str:
    # wtpsplit is in the [test] extra: CI installs it, so this runs (and fails loudly) there
    return str(build_tiny_sat(tmp_path_factory.mktemp("tiny-sat")))


def steps(segmenter: SaTSegmenter, text: str) -> list[str]:
    spans = segmenter.split(text)
    check_tiling(spans, text, "SaTSegmenter")
    return [text[a:b] for a, b in spans]


def test_is_a_segmenter() -> None:
    assert implements_protocol(SaTSegmenter, Segmenter)
    assert isinstance(SaTSegmenter(), Segmenter)


@pytest.mark.parametrize("threshold", [0.5, 1.0])
@pytest.mark.parametrize("min_chars", [0, 15])
def test_real_sat_spans_tile(tiny_sat: str, threshold: float, min_chars: int) -> None:
    segmenter = SaTSegmenter(model=tiny_sat, threshold=threshold, min_chars=min_chars)
    assert segmenter.split("") == []
    for text in TEXTS:
        assert "".join(steps(segmenter, text)) == text


def test_real_sat_policy(tiny_sat: str) -> None:
    """On SaT's own sentences: steps reach min_chars, and blank lines end steps and only at step ends."""
    segmenter = SaTSegmenter(model=tiny_sat, threshold=0.5, min_chars=15)
    text = TEXTS[3]
    found = steps(segmenter, text)
    assert found[0] == "Step one.\n\n"  # short, but a blank line ends it
    assert all("\n\n" not in step.rstrip() for step in found)
    assert found[-1] == "Step three."  # short, but a blank line separates it from the step before
    assert all(len(step) >= 15 or step.endswith("\n\n") for step in found[:-1])
    many = steps(SaTSegmenter(model=tiny_sat, threshold=0.5, min_chars=0), TEXTS[1])
    assert len(many) > len(steps(segmenter, TEXTS[1])) >= 1  # a random model cuts often; merging joins them


def test_real_sat_is_deterministic(tiny_sat: str) -> None:
    first = SaTSegmenter(model=tiny_sat, threshold=0.5, min_chars=5)
    second = SaTSegmenter(model=tiny_sat, threshold=0.5, min_chars=5)
    for text in TEXTS:
        assert first.split(text) == first.split(text) == second.split(text)


def test_real_sat_max_chars(tiny_sat: str) -> None:
    segmenter = SaTSegmenter(model=tiny_sat, threshold=0.5, min_chars=1000, max_chars_per_step=30)
    found = steps(segmenter, TEXTS[1])
    assert len(found) > 1  # min_chars alone would give one step


def pieces(text: str, sentences: list[str], min_chars: int = 0, paragraphs: bool = True, most: int | None = None):
    spans = _steps_from_sentences(text, sentences, min_chars, paragraphs, most)
    check_tiling(spans, text, "SaTSegmenter")
    return [text[a:b] for a, b in spans]


def test_sentences_map_back_to_offsets() -> None:
    # what SaT returned on the tiny model: the newlines dropped, '' for the blank line
    text = "  The fox jumps. Then we compute x.\n\nWait, let me check!  So π ≈ 3.14?  "
    sentences = ["  The fox jumps. Then we compute x.", "", "Wait, let me check!  So π ≈ 3.14?  "]
    assert pieces(text, sentences) == ["  The fox jumps. Then we compute x.\n\n", "Wait, let me check!  So π ≈ 3.14?  "]
    split = ["The fox jumps.", "Then we compute x.", "Wait, let me check!", "So π ≈ 3.14?"]  # stripped
    assert pieces(text, split) == [
        "  The fox jumps. ",
        "Then we compute x.\n\n",
        "Wait, let me check!  ",
        split[3] + "  ",
    ]
    assert pieces("", []) == []
    assert pieces("only", ["only"]) == ["only"]
    assert pieces("a b", ["a", "b", "c", "d"]) == ["a ", "b"]  # more text claimed than there is: still tiles
    assert pieces("a b c", ["a"]) == ["a b c"]


def test_merge_policy() -> None:
    text = "One. Two. Three is longer.\n\nFour.\n\nFive. Six."
    sentences = ["One.", "Two.", "Three is longer.", "Four.", "Five.", "Six."]
    assert pieces(text, sentences, min_chars=8) == ["One. Two. ", "Three is longer.\n\n", "Four.\n\n", "Five. Six."]
    # a short last step joins the step before unless a blank line separates them
    assert pieces("A long first sentence. End.", ["A long first sentence.", "End."], min_chars=10) == [
        "A long first sentence. End."
    ]
    assert pieces(text, sentences, min_chars=8, paragraphs=False) == [
        "One. Two. ",
        "Three is longer.\n\n",
        "Four.\n\nFive. Six.",
    ]
    assert pieces(text, sentences, min_chars=0) == [s + " " for s in sentences[:2]] + [
        "Three is longer.\n\n",
        "Four.\n\n",
        "Five. ",
        "Six.",
    ]


def test_blank_line_inside_a_sentence_still_ends_a_step() -> None:
    assert pieces("a\n\nb c", ["a\n\nb c"]) == ["a\n\n", "b c"]
    assert pieces("a\n\nb c", ["a\n\nb c"], paragraphs=False) == ["a\n\nb c"]
    assert pieces("\n\na", ["a"]) == ["\n\n", "a"]  # like ParagraphSegmenter


def test_max_chars_per_step() -> None:
    text = "Aa. Bb. Cc. A very long sentence that exceeds the limit. Dd."
    sentences = ["Aa.", "Bb.", "Cc.", "A very long sentence that exceeds the limit.", "Dd."]
    # the limit wins over min_chars; a long sentence stays whole; the short tail cannot join it
    assert pieces(text, sentences, min_chars=100, most=8) == [
        "Aa. Bb. ",
        "Cc. ",
        "A very long sentence that exceeds the limit. ",
        "Dd.",
    ]
    assert pieces(text, sentences, min_chars=100) == [text]


def test_offline_load_error_says_how_to_fetch(tiny_sat: str, tmp_path: Path) -> None:
    with pytest.raises(NSAError, match=r"hf download segment-any-text/sat-no-such-model --local-dir DIR"):
        SaTSegmenter(model="sat-no-such-model", tokenizer=tiny_sat).split("Some text.")
    weights_only = tmp_path / "weights-only"  # a SaT folder as the hub ships it: no tokenizer
    weights_only.mkdir()
    (weights_only / "config.json").write_text((Path(tiny_sat) / "config.json").read_text())
    with pytest.raises(NSAError, match=r"facebookAI/xlm-roberta-base.*--local-dir TOK") as info:
        SaTSegmenter(model=str(weights_only)).split("Some text.")
    assert "\n" not in str(info.value)


def test_bad_settings() -> None:
    with pytest.raises(NSAError, match="min_chars"):
        SaTSegmenter(min_chars=-1)
    with pytest.raises(NSAError, match="max_chars_per_step"):
        SaTSegmenter(max_chars_per_step=0)
