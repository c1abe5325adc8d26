"""The data stages of BCPG-NSA, top to bottom, each cached by fingerprint.

problems -> sample -> verify -> groups -> behaviour (log pi_ref of the kept answers)
                                       -> segment -> judge (each judge) -> label
The training rows are the label stage's rows with the behaviour log-probs joined in.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset

from nsa.contracts import Consensus, Sampler, Segmenter, StepJudge, Verifier
from nsa.models import load_policy, load_tokenizer, policy_identity, resolve_policy
from nsa.stages import behaviour, rollouts, steps
from nsa.stages.cache import StageOutput, describe, fingerprint, run_stage


@dataclass
class Recipe:
    """Everything the data stages need; built by the data module from its arguments."""

    policy: str
    problems: StageOutput | None  # None when rollouts come from a file
    sampler: Sampler | None  # None when rollouts come from a file
    verifier: Verifier
    segmenter: Segmenter
    judges: Sequence[StepJudge]
    consensus: Consensus
    prompt_template: str
    cache_dir: str
    shard_size: int
    logprob_precision: str
    logprob_batch_size: int
    rollouts: str | None = None  # a rollout file (``nsa generate --output``) instead of sampling
    cached_only: bool = False  # every stage must be cached already (see cache.run_stage)


def judge_names(judges: Sequence[StepJudge]) -> list[str]:
    """Class names, numbered when a class appears twice."""
    counts = Counter(type(j).__name__ for j in judges)
    seen: Counter[str] = Counter()
    names = []
    for judge in judges:
        name = type(judge).__name__
        seen[name] += 1
        names.append(f"{name}{seen[name]}" if counts[name] > 1 else name)
    return names


def scoring_identity(judge: StepJudge) -> dict:
    """A judge's cache identity without its threshold: changing lambda re-runs no model."""
    return {k: v for k, v in describe(judge).items() if k != "threshold"}


def rows_per_shard(recipe: Recipe) -> int:
    """Answers per committed shard of the stages after sampling: a shard of problems' worth."""
    samples = recipe.sampler.num_samples if recipe.sampler is not None else 16  # rollouts from a file
    return recipe.shard_size * samples


def generate(recipe: Recipe) -> list[StageOutput]:
    """The rollout stages: problems, sampled answers (or a rollout file), verified answers."""
    sampled = rollouts.load_rollouts(recipe.rollouts) if recipe.rollouts else _sample(recipe)
    try:
        verified = run_stage(
            recipe.cache_dir,
            "verify",
            sampled,
            {"verifier": recipe.verifier},
            functools.partial(rollouts.verify_shard, verifier=recipe.verifier),
            rows_per_shard(recipe),
            rollouts.summarise_verify,
            cached_only=recipe.cached_only,
        )
    finally:
        getattr(recipe.verifier, "close", lambda: None)()
    return [out for out in (recipe.problems, sampled, verified) if out is not None]


def _sample(recipe: Recipe) -> StageOutput:
    model_dir = resolve_policy(recipe.policy)
    tokenizer = load_tokenizer(model_dir)
    # rows: the columns of rollouts.ROLLOUT_FEATURES (2 added response_logprobs)
    config = {"sampler": recipe.sampler, "policy": policy_identity(recipe.policy), "template": recipe.prompt_template}
    sample = functools.partial(
        rollouts.sample_shard,
        sampler=recipe.sampler,
        model_dir=model_dir,
        tokenizer=tokenizer,
        template=recipe.prompt_template,
    )
    summarise = functools.partial(rollouts.summarise_samples, eos_id=tokenizer.eos_token_id)
    try:
        return run_stage(
            recipe.cache_dir,
            "sample",
            recipe.problems,
            {**config, "rows": 2},
            sample,
            recipe.shard_size,
            summarise,
            cached_only=recipe.cached_only,
        )
    finally:
        getattr(recipe.sampler, "close", lambda: None)()  # a vLLM engine's memory is free before training


def run(recipe: Recipe) -> list[StageOutput]:
    """Run (or reuse) every stage; returns their outputs in order, the training set last."""
    model_dir = resolve_policy(recipe.policy)
    tokenizer = load_tokenizer(model_dir)
    policy = policy_identity(recipe.policy)
    stage = functools.partial(run_stage, recipe.cache_dir, cached_only=recipe.cached_only)
    rows = rows_per_shard(recipe)
    first = generate(recipe)
    verified = first[-1]
    grouped = stage(
        "groups",
        verified,
        {},
        rollouts.filter_groups,
        len(verified.dataset) + 1,
        functools.partial(rollouts.summarise_groups, verified.dataset),
    )
    segmented = stage(
        "segment",
        grouped,
        {"segmenter": recipe.segmenter},
        functools.partial(steps.segment_shard, segmenter=recipe.segmenter),
        rows,
        _summarise_segments,
    )
    # pi_ref's log-probs depend on the kept answers only: a new judge or rule reuses them
    scored = stage(
        "behaviour",
        grouped,
        {"policy": policy, "precision": recipe.logprob_precision},
        _behaviour_fn(model_dir, recipe.logprob_precision, tokenizer.pad_token_id, recipe.logprob_batch_size),
        rows,
    )
    labelled = _judge_and_label(recipe, segmented, tokenizer, rows, policy)
    train = labelled.dataset.add_column("ref_logprobs", scored.dataset["ref_logprobs"])
    train_fp = fingerprint(labelled.fingerprint, scored.fingerprint)
    trained_on = StageOutput("train", train, train_fp, labelled.path, {})
    return [*first, grouped, segmented, scored, labelled, trained_on]


def _judge_and_label(recipe: Recipe, segmented: StageOutput, tokenizer, rows: int, policy: dict) -> StageOutput:
    """Each judge's scores are cached on their own; the label stage combines them."""
    names = judge_names(recipe.judges)
    combined = segmented.dataset
    fps, judge_stats = [], {}
    for name, judge in zip(names, recipe.judges):
        try:
            judged = run_stage(
                recipe.cache_dir,
                "judge",
                segmented,
                scoring_identity(judge),
                functools.partial(steps.judge_shard, judge=judge),
                rows,
                functools.partial(_judge_counters, judge=judge),
                cached_only=recipe.cached_only,
            )
        finally:
            getattr(judge, "close", lambda: None)()  # its model or vLLM process goes, even on an error
        combined = combined.add_column(f"scores/{name}", judged.dataset["scores"])
        fps.append(judged.fingerprint)
        judge_stats.update({f"judge/{name}/{k}": v for k, v in judged.stats.items()})
    source = StageOutput("judged", combined, fingerprint(segmented.fingerprint, fps), segmented.path, {})
    config = {
        "names": names,
        "thresholds": [j.threshold for j in recipe.judges],
        "consensus": recipe.consensus,
        "tokenizer": policy,
    }
    labelled = run_stage(
        recipe.cache_dir,
        "label",
        source,
        config,
        functools.partial(
            steps.label_shard,
            names=names,
            judges=recipe.judges,
            consensus=recipe.consensus,
            tokenizer=tokenizer,
        ),
        rows,
        functools.partial(steps.summarise_labels, names=names, judges=recipe.judges),
        cached_only=recipe.cached_only,
    )
    labelled.stats = {**labelled.stats, **judge_stats}
    return labelled


def _judge_counters(data: Dataset, judge: StepJudge) -> dict[str, float]:
    """A judge's own counters (an LLM judge's malformed or late replies), if it keeps any.

    They cover the shards judged in this process; shards reused after a kill are not recounted.
    """
    counters = getattr(judge, "stats", None)
    return {k: float(v) for k, v in counters().items()} if callable(counters) else {}


def _summarise_segments(data: Dataset) -> dict[str, float]:
    return {"steps_per_negative": float(sum(len(s) for s in data["spans"]) / max(1, sum(map(bool, data["spans"]))))}


def _behaviour_fn(model_dir: str, precision: str, pad_id: int, batch_size: int):
    """Loads pi_ref only when a shard actually needs computing, on a GPU when there is one."""
    weights, autocast = behaviour.PRECISIONS[precision]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = functools.cache(lambda: load_policy(model_dir, weights).to(device).eval())

    def fn(data: Dataset) -> Dataset:
        with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
            return behaviour.behaviour_shard(data, model(), pad_id, batch_size)

    return fn
