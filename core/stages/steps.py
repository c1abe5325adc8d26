"""Stages 1-2: split negatives into steps, judge each step, combine verdicts per token.

Steps are character spans that tile the response. They reach the policy's tokens through
per-token character offsets of the generated ids (never through re-tokenised text).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from datasets import Dataset

from nsa.contracts import Consensus, Segmenter, Span, StepItem, StepJudge, is_negative, passes
from nsa.errors import NSAError


def check_tiling(spans: Sequence[Span], text: str, who: str) -> None:
    """Spans must be contiguous, in order, and cover the text exactly."""
    position = 0
    for start, end in spans:
        if start != position or end < start:
            raise NSAError(
                f"segmenter {who} returned spans that do not tile the response (span ({start}, {end}) "
                f"should start at {position}); each span must start where the previous ended"
            )
        position = end
    if position != len(text):
        raise NSAError(f"segmenter {who} returned spans ending at {position}, not at the text's end {len(text)}")


def segment_shard(rollouts: Dataset, segmenter: Segmenter) -> Dataset:
    """Negatives get their steps; positives are not segmented (empty span list)."""
    who = type(segmenter).__name__
    spans = []
    for text, reward in zip(rollouts["response"], rollouts["reward"]):
        found = [(int(s), int(e)) for s, e in segmenter.split(text)] if is_negative(reward) else []
        if is_negative(reward):
            check_tiling(found, text, who)
        spans.append(found)
    return rollouts.add_column("spans", spans)


def judge_shard(rollouts: Dataset, judge: StepJudge) -> Dataset:
    """Scores for every step of every negative; a list of the wrong length is an error."""
    negatives = [i for i, spans in enumerate(rollouts["spans"]) if spans]
    items = [StepItem(rollouts[i]["question"], rollouts[i]["response"], rollouts[i]["spans"]) for i in negatives]
    scores: list[list[float | None]] = [[] for _ in range(len(rollouts))]
    for i, item, got in zip(negatives, items, judge.score(items) if items else []):
        if len(got) != len(item.spans):
            raise NSAError(
                f"judge {type(judge).__name__} returned {len(got)} scores for a response with {len(item.spans)} steps"
            )
        scores[i] = [None if s is None else float(s) for s in got]
    return Dataset.from_dict({"scores": scores})


def verdicts(scores: Sequence[float | None], threshold: float) -> list[bool | None]:
    return [None if s is None else passes(s, threshold) for s in scores]


def token_offsets(tokenizer, ids: Sequence[int]) -> list[int]:
    """Start character of each token in ``decode(ids, skip_special_tokens=True)``.

    Tokens are decoded one at a time; a run of tokens that splits a multi-byte character
    (their pieces hold U+FFFD) is decoded together, so the cost stays linear. A token that
    starts inside a split character starts at that character. When the pieces still do
    not rebuild the text (a tokenizer whose decode is not piecewise), every prefix is
    decoded: exact but quadratic.
    """
    full = tokenizer.decode(ids, skip_special_tokens=True)
    pieces = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=True)
    starts = _piecewise_offsets(tokenizer, ids, pieces, full)
    if starts is not None:
        return starts
    prefixes = [tokenizer.decode(ids[:k], skip_special_tokens=True) for k in range(len(ids))]
    return [len(os.path.commonprefix([p, full])) for p in prefixes]


def _piecewise_offsets(tokenizer, ids: Sequence[int], pieces: list[str], full: str) -> list[int] | None:
    starts: list[int] = []
    position, i = 0, 0
    while i < len(ids):
        j = i + 1  # grow the run until it decodes to whole characters
        while "\ufffd" in pieces[i] and j < len(ids) and j - i < 8 and "\ufffd" in _decode(tokenizer, ids[i:j]):
            j += 1
        text = _decode(tokenizer, ids[i:j]) if j > i + 1 else pieces[i]
        if not full.startswith(text, position):
            return None
        starts.append(position)
        # within a run, a prefix that ends inside a character decodes to "...\ufffd"
        starts += [position + len(os.path.commonprefix([_decode(tokenizer, ids[i:k]), text])) for k in range(i + 1, j)]
        position, i = position + len(text), j
    return starts if position == len(full) else None


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def token_labels(starts: Sequence[int], spans: Sequence[Span], labels: Sequence[bool]) -> list[bool]:
    """A token takes the label of the step its first character falls in."""
    marks, step = [], 0
    for start in starts:
        while step + 1 < len(spans) and start >= spans[step][1]:
            step += 1
        marks.append(bool(spans) and bool(labels[step]))
    return marks


def label_shard(
    rollouts: Dataset,
    names: Sequence[str],
    judges: Sequence[StepJudge],
    consensus: Consensus,
    tokenizer,
    reject_wrong_final_step: bool = True,
) -> Dataset:
    """Consensus step labels, the per-token NSA mask, and per-judge token counts.

    Reads the judges' cached scores from the columns ``scores/<name>``. With
    ``reject_wrong_final_step``, the consensus is overruled on one step (see ``states_a_wrong_answer``).
    """
    step_labels, masks, judge_tokens = [], [], []
    for row in rollouts:
        votes = {n: verdicts(row[f"scores/{n}"], j.threshold) for n, j in zip(names, judges)}
        label = consensus.combine(votes) if row["spans"] else []
        if reject_wrong_final_step and states_a_wrong_answer(row):
            label = [*label[:-1], False]
        starts = token_offsets(tokenizer, row["response_ids"]) if row["spans"] else [0] * len(row["response_ids"])
        step_labels.append(label)
        masks.append(token_labels(starts, row["spans"], label))
        judge_tokens.append(
            [sum(token_labels(starts, row["spans"], [bool(v) for v in vote])) for vote in votes.values()]
        )
    rollouts = rollouts.add_column("step_labels", step_labels)
    rollouts = rollouts.add_column("nsa_mask", masks)
    return rollouts.add_column("judge_tokens_correct", judge_tokens)


def states_a_wrong_answer(row: dict) -> bool:
    """Whether the answer's last step states a final answer the verifier found wrong: the answer is
    a negative that has a final answer (verify status ``ok``), and the verifier reads it at the end
    (math_verify takes the last boxed or stated answer, the code verifier the last program). No judge
    may pass that step: what it states is known to be wrong, however sound its arithmetic."""
    return bool(row["spans"]) and is_negative(row["reward"]) and row.get("verify_status", "ok") == "ok"


def summarise_labels(rollouts: Dataset, names: Sequence[str], judges: Sequence[StepJudge]) -> dict[str, float]:
    negative_tokens = sum(len(ids) for ids, r in zip(rollouts["response_ids"], rollouts["reward"]) if is_negative(r))
    stats = {
        "steps": float(sum(len(s) for s in rollouts["spans"])),
        "steps_correct/consensus": float(sum(sum(map(bool, s)) for s in rollouts["step_labels"])),
        "tokens_negative": float(negative_tokens),
        "tokens_correct/consensus": float(sum(sum(m) for m in rollouts["nsa_mask"])),
    }
    for j, (name, judge) in enumerate(zip(names, judges)):
        flat = [v for row in rollouts[f"scores/{name}"] for v in verdicts(row, judge.threshold)]
        stats[f"steps_correct/{name}"] = float(sum(v is True for v in flat))
        stats[f"steps_unjudged/{name}"] = float(sum(v is None for v in flat))
        stats[f"tokens_correct/{name}"] = float(sum(t[j] for t in rollouts["judge_tokens_correct"]))
    return stats
