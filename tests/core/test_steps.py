"""Steps to tokens: span tiling, per-token character offsets, and token labels."""

from __future__ import annotations

import pytest

from nsa.errors import NSAError
from nsa.models import load_tokenizer
from nsa.stages.steps import _piecewise_offsets, check_tiling, token_labels, token_offsets


@pytest.mark.parametrize(
    ("spans", "text"),
    [
        ([(0, 3), (3, 7), (7, 10)], "abcdefghij"),
        ([(0, 10)], "abcdefghij"),
        ([(0, 0), (0, 10)], "abcdefghij"),  # an empty step still tiles
        ([], ""),
    ],
)
def test_check_tiling_accepts_tilings(spans, text) -> None:
    check_tiling(spans, text, "MySegmenter")


@pytest.mark.parametrize(
    ("spans", "text", "message"),
    [
        ([(0, 3), (4, 10)], "abcdefghij", "should start at 3"),  # gap
        ([(0, 5), (4, 10)], "abcdefghij", "should start at 5"),  # overlap
        ([(1, 10)], "abcdefghij", "should start at 0"),  # does not start at 0
        ([(0, 5), (5, 9)], "abcdefghij", "ending at 9"),  # short coverage
        ([(0, 12)], "abcdefghij", "ending at 12"),  # past the end
        ([(0, 5), (5, 3), (3, 10)], "abcdefghij", r"\(5, 3\)"),  # reversed span
        ([(5, 10), (0, 5)], "abcdefghij", "should start at 0"),  # out of order
        ([], "abc", "ending at 0"),  # nothing for a non-empty text
    ],
)
def test_check_tiling_rejects_non_tilings(spans, text, message) -> None:
    with pytest.raises(NSAError, match=message) as err:
        check_tiling(spans, text, "MySegmenter")
    assert "segmenter MySegmenter" in str(err.value)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


def encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # byte-level BPE round-trips
    return ids


def char_of_each_token(tokenizer, ids: list[int], text: str) -> list[int]:
    """Ground truth from bytes: the character holding each token's first byte.

    A byte-level BPE token string has one character per byte, so the token's byte offset is
    the summed lengths of the tokens before it; the characters wholly before that byte are
    what a UTF-8 decode of the byte prefix keeps (errors="ignore" drops a cut character).
    """
    raw = text.encode()
    starts, position = [], 0
    for token in tokenizer.convert_ids_to_tokens(ids):
        starts.append(len(raw[:position].decode("utf-8", errors="ignore")))
        position += len(token)
    assert position == len(raw)
    return starts


ASCII = ["12 * 7 = 84", "Step 1:\n\nStep 2:", "The answer is \\boxed{69}."]
NON_ASCII = ["café – 12 × 7 = 84\n\nNext", "é", "x = 3 €", "日本語 ok", "a 🙂 b"]


@pytest.mark.parametrize("text", ASCII + NON_ASCII)
def test_token_offsets_match_the_bytes(tokenizer, text: str) -> None:
    ids = encode(tokenizer, text)
    offsets = token_offsets(tokenizer, ids)
    assert len(offsets) == len(ids)
    assert offsets[0] == 0
    assert all(a <= b for a, b in zip(offsets, offsets[1:]))
    assert offsets[-1] < len(text)
    assert offsets == char_of_each_token(tokenizer, ids, text)
    # slicing the text at the offsets gives every character to exactly one token
    bounds = offsets + [len(text)]
    assert "".join(text[a:b] for a, b in zip(bounds, bounds[1:])) == text


@pytest.mark.parametrize("text", ASCII)
def test_token_offsets_fast_path_slices_each_piece(tokenizer, text: str) -> None:
    """Pieces decoded alone concatenate to the text: each slice is exactly its token's piece,
    and the offsets equal the lengths of the decoded prefixes."""
    ids = encode(tokenizer, text)
    pieces = tokenizer.batch_decode([[i] for i in ids])
    assert "".join(pieces) == text  # the fast path is taken
    offsets = token_offsets(tokenizer, ids)
    bounds = offsets + [len(text)]
    assert [text[a:b] for a, b in zip(bounds, bounds[1:])] == pieces
    assert offsets == [len(tokenizer.decode(ids[:k])) for k in range(len(ids))]


@pytest.mark.parametrize("text", NON_ASCII)
def test_token_offsets_on_split_characters(tokenizer, text: str) -> None:
    """Multi-byte characters split across byte-level tokens: pieces decode to U+FFFD, so the
    run of tokens is decoded together, and a token that starts inside a character is given
    that character, never the one after it. The piecewise path must handle these texts (no
    quadratic prefix decoding)."""
    ids = encode(tokenizer, text)
    pieces = tokenizer.batch_decode([[i] for i in ids])
    assert "".join(pieces) != text  # characters are split across tokens
    assert _piecewise_offsets(tokenizer, ids, pieces, text) is not None
    assert token_offsets(tokenizer, ids) == char_of_each_token(tokenizer, ids, text)


def test_token_offsets_hand_checked(tokenizer) -> None:
    """ "é" is 2 bytes, 2 tokens here: both start at character 0 (the second is inside é).
    "café" = c a f + é's 2 bytes -> 0 1 2 3 3."""
    assert token_offsets(tokenizer, encode(tokenizer, "é")) == [0, 0]
    assert token_offsets(tokenizer, encode(tokenizer, "café")) == [0, 1, 2, 3, 3]


def test_token_offsets_eos_starts_at_the_end(tokenizer) -> None:
    """EOS decodes to nothing (skip_special_tokens): it starts at len(text), in both paths."""
    eos = tokenizer.eos_token_id
    for text in ("12 * 7 = 84", "café"):
        ids = encode(tokenizer, text)
        offsets = token_offsets(tokenizer, ids + [eos])
        assert offsets == token_offsets(tokenizer, ids) + [len(text)]


def test_token_labels_hand_checked() -> None:
    """Text "ab\\n\\ncd\\n\\nef", spans (0,4) (4,8) (8,10) labelled T F T.

    Token starts 0 1 3 4 6 8 9 10(EOS): the token at 3 covers "\\n" and would reach into step
    2, but its first character (3) is in step 1; 10 is past the end and stays in the last step.
    -> T T T F F T T T
    """
    starts = [0, 1, 3, 4, 6, 8, 9, 10]
    spans = [(0, 4), (4, 8), (8, 10)]
    assert token_labels(starts, spans, [True, False, True]) == [True, True, True, False, False] + [True] * 3
    assert token_labels(starts, spans, [False, True, False]) == [False] * 3 + [True, True] + [False] * 3


def test_token_labels_edge_cases() -> None:
    """No steps -> all False; an empty step (4, 4) is skipped: the token at 4 is in (4, 9)."""
    assert token_labels([0, 1, 2], [], []) == [False, False, False]
    assert token_labels([0, 2, 4, 6], [(0, 4), (4, 4), (4, 9)], [False, True, False]) == [False] * 4
    assert token_labels([0, 2, 4, 6], [(0, 4), (4, 4), (4, 9)], [True, True, False]) == [
        True,
        True,
        False,
        False,
    ]


def test_a_step_stating_a_wrong_final_answer_is_never_mined(tokenizer) -> None:
    """The quickstart's case: "3 + 3 = 6" passes the arithmetic judge, and so does "So, the answer is
    600." (it claims no arithmetic), but the verifier found 600 wrong for a question whose answer is 6:
    with the rule (the default) that last step is rejected, its tokens leave the mask, and only the
    first step is mined; without it the judges' verdicts stand. A right answer, and a negative with no
    final answer (cut off: status no_answer, a last step that states nothing), keep their labels."""
    from datasets import Dataset

    from nsa.plugins.consensus.vote import Vote
    from nsa.plugins.judges.arithmetic import ArithmeticJudge
    from nsa.stages.steps import label_shard

    text = "3 + 3 = 6\n\nSo, the answer is 600."
    spans = [(0, 11), (11, len(text))]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = Dataset.from_list(
        [
            {"spans": spans, "response_ids": ids, "reward": reward, "verify_status": status, "scores/A": [1.0, 1.0]}
            for reward, status in ((0.0, "ok"), (1.0, "ok"), (0.0, "no_answer"))
        ]
    )
    judges, vote = [ArithmeticJudge()], Vote(rule="all")
    ruled = label_shard(rows, ["A"], judges, vote, tokenizer)
    assert ruled["step_labels"] == [[True, False], [True, True], [True, True]]
    starts = token_offsets(tokenizer, ids)
    assert ruled["nsa_mask"][0] == [start < 11 for start in starts]
    assert ruled["judge_tokens_correct"][0] == [len(ids)]  # the judge's own count is its verdicts
    judged = label_shard(rows, ["A"], judges, vote, tokenizer, reject_wrong_final_step=False)
    assert judged["step_labels"] == [[True, True]] * 3
