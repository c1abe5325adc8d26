"""The data stages of BCPG-NSA, top to bottom, each cached by fingerprint.

problems -> sample -> verify -> groups -> behaviour (log pi_ref of the kept answers)
                                       -> segment -> judge (each judge) -> label
The training rows are the label stage's rows with the behaviour log-probs joined in.

Every function takes the ``Team`` of processes that share the stages' shards (one process
by default): each stage's output is the same on any number of processes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset

from nsa.contracts import (
    Consensus,
    Sampler,
    Segmenter,
    StepJudge,
    Verifier,
    closed_after,
    devices_per_engine,
    prompt_room,
)
from nsa.models import load_policy, load_tokenizer, local_device, policy_identity, resolve_policy
from nsa.stages import behaviour, rollouts, steps
from nsa.stages.cache import StageOutput, check_shared, describe, fingerprint, run_stage
from nsa.stages.problems import MATH_TEMPLATE, load_problems
from nsa.team import Team, check_span, muted


@dataclass(kw_only=True)
class Recipe:
    """Everything the data stages need, built once by the data module from its arguments
    (see ``NSADataModule`` for what each means)."""

    policy: str
    verifier: Verifier
    segmenter: Segmenter
    judges: Sequence[StepJudge]
    consensus: Consensus
    sampler: Sampler | None = None  # None when rollouts come from a file
    problems: str = ""  # unread when rollouts come from a file
    question_field: str = "question"
    answer_field: str = "answer"
    split: str = "train"
    max_problems: int | None = None
    rollouts: str | None = None  # a rollout file (``nsa generate --output``) instead of sampling
    prompt_template: str = MATH_TEMPLATE
    cache_dir: str = ".nsa_cache"
    shared_cache_dir: bool = False  # the team is the whole job (else each node's processes)
    shard_size: int = 16
    logprob_precision: str = "32-true"
    logprob_batch_size: int = 8
    reject_wrong_final_step: bool = True  # see nsa.stages.steps.label_shard

    def plugins(self) -> list[object]:
        return [p for p in (self.sampler, self.verifier, self.segmenter, *self.judges) if p is not None]


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


def check_team(team: Team, plugins: Sequence[object], cache_dir: str) -> None:
    """Before any stage runs (one-line errors): every plugin's engine fits the node's devices,
    and every process of the team sees ``cache_dir``."""
    for plugin in plugins:
        check_span(team, devices_per_engine(plugin), type(plugin).__name__)
    check_shared(cache_dir, team)


def sample(
    problems: StageOutput,
    sampler: Sampler,
    *,
    policy: str,
    template: str,
    cache_dir: str,
    shard_size: int,
    team: Team,
    name: str = "sample",
    option: str = "data.sampler",
) -> StageOutput:
    """``sampler.num_samples`` answers to each problem whose prompt fits the sampler (the others
    are dropped first, counted in ``prompts_too_long``): the cached sampling stage of training
    and of evaluation. ``option`` names the sampler in messages. The caller closes the sampler
    (an evaluation keeps its engine for the next benchmark)."""
    model_dir = resolve_policy(policy)
    tokenizer = load_tokenizer(model_dir)
    with muted(team):  # every process drops the same prompts; the leader says so
        room = prompt_room(sampler, model_dir)
        problems, too_long = rollouts.drop_long_prompts(problems, tokenizer, template, room, option)
    fn = functools.partial(
        rollouts.sample_shard, sampler=sampler, model_dir=model_dir, tokenizer=tokenizer, template=template
    )
    # rows: the columns of rollouts.ROLLOUT_FEATURES (2 added response_logprobs)
    config = {"sampler": sampler, "policy": policy_identity(policy), "template": template, "rows": 2}
    summarise = functools.partial(rollouts.summarise_samples, eos_id=tokenizer.eos_token_id)
    sampled = run_stage(cache_dir, name, problems, config, fn, shard_size, summarise, team, devices_per_engine(sampler))
    sampled.stats = {**sampled.stats, "prompts_too_long": float(too_long)}
    return sampled


def verify(
    sampled: StageOutput,
    verifier: Verifier,
    *,
    rows: int,
    cache_dir: str,
    team: Team,
    name: str = "verify",
    answers: dict[str, str] | None = None,
) -> StageOutput:
    """Each answer's reward: the cached verify stage of training and of evaluation (which
    passes the references by problem id, ``answers``). The verifier is closed after it."""
    fn = functools.partial(rollouts.verify_shard, verifier=verifier, answers=answers)
    with closed_after(verifier):
        return run_stage(cache_dir, name, sampled, {"verifier": verifier}, fn, rows, rollouts.summarise_verify, team)


def generate(recipe: Recipe, team: Team | None = None) -> list[StageOutput]:
    """The rollout stages: problems, sampled answers (or a rollout file), verified answers."""
    team = team or Team.alone()
    check_team(team, recipe.plugins(), recipe.cache_dir)
    problems = sampled = None
    if recipe.rollouts:
        sampled = rollouts.load_rollouts(recipe.rollouts)
    else:
        problems = load_problems(
            recipe.problems, recipe.question_field, recipe.answer_field, recipe.split, recipe.max_problems
        )
        with closed_after(recipe.sampler):  # a vLLM engine's memory is free before the next stage
            sampled = sample(
                problems,
                recipe.sampler,
                policy=recipe.policy,
                template=recipe.prompt_template,
                cache_dir=recipe.cache_dir,
                shard_size=recipe.shard_size,
                team=team,
            )
    verified = verify(sampled, recipe.verifier, rows=rows_per_shard(recipe), cache_dir=recipe.cache_dir, team=team)
    return [out for out in (problems, sampled, verified) if out is not None]


def run(recipe: Recipe, team: Team | None = None) -> list[StageOutput]:
    """Run (or reuse) every stage on ``team``'s processes; returns their outputs in order, the
    training set last (every process gets all of it)."""
    team = team or Team.alone()
    model_dir = resolve_policy(recipe.policy)
    tokenizer = load_tokenizer(model_dir)
    policy = policy_identity(recipe.policy)
    stage = functools.partial(run_stage, recipe.cache_dir, team=team)
    rows = rows_per_shard(recipe)
    first = generate(recipe, team)
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
    judged, labelled = _judge_and_label(recipe, segmented, tokenizer, rows, policy, team)
    train = labelled.dataset.add_column("ref_logprobs", scored.dataset["ref_logprobs"])
    train_fp = fingerprint(labelled.fingerprint, scored.fingerprint)
    trained_on = StageOutput("train", train, train_fp, labelled.path, {})
    return [*first, grouped, segmented, scored, *judged, labelled, trained_on]


def _judge_and_label(
    recipe: Recipe, segmented: StageOutput, tokenizer, rows: int, policy: dict, team: Team
) -> tuple[list[StageOutput], StageOutput]:
    """Each judge's scores are cached on their own (a stage ``judge/<name>`` each, whose counters the
    label stage's statistics carry); the label stage combines them."""
    names = judge_names(recipe.judges)
    combined = segmented.dataset
    fps, judge_stats, outputs = [], {}, []
    for name, judge in zip(names, recipe.judges):
        with closed_after(judge):  # its model or vLLM process goes before the next judge's
            judged = run_stage(
                recipe.cache_dir,
                "judge",
                segmented,
                scoring_identity(judge),
                functools.partial(steps.judge_shard, judge=judge),
                rows,
                functools.partial(_judge_counters, judge=judge, team=team),
                team,
                devices_per_engine(judge),
            )
        combined = combined.add_column(f"scores/{name}", judged.dataset["scores"])
        fps.append(judged.fingerprint)
        outputs.append(dataclasses.replace(judged, name=f"judge/{name}", stats={}))
        judge_stats.update({f"judge/{name}/{k}": v for k, v in judged.stats.items()})
    source = StageOutput("judged", combined, fingerprint(segmented.fingerprint, fps), segmented.path, {})
    config = {
        "names": names,
        "thresholds": [j.threshold for j in recipe.judges],
        "consensus": recipe.consensus,
        "tokenizer": policy,
        "wrong_final_step": "rejected" if recipe.reject_wrong_final_step else "judged",
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
            reject_wrong_final_step=recipe.reject_wrong_final_step,
        ),
        rows,
        functools.partial(steps.summarise_labels, names=names, judges=recipe.judges),
        team,
    )
    labelled.stats = {**labelled.stats, **judge_stats}
    return outputs, labelled


def _judge_counters(data: Dataset, judge: StepJudge, team: Team) -> dict[str, float]:
    """A judge's own counters (an LLM judge's malformed or late replies), if it keeps any,
    summed over the team's processes. Shards reused after a kill are not recounted."""
    counters = getattr(judge, "stats", None)
    return team.total("judge_counters", {k: float(v) for k, v in counters().items()} if callable(counters) else {})


def _summarise_segments(data: Dataset) -> dict[str, float]:
    return {"steps_per_negative": float(sum(len(s) for s in data["spans"]) / max(1, sum(map(bool, data["spans"]))))}


def _behaviour_fn(model_dir: str, precision: str, pad_id: int, batch_size: int):
    """Loads pi_ref only when a shard actually needs computing, on a GPU when there is one."""
    weights, autocast = behaviour.PRECISIONS[precision]
    device = local_device()  # each process's own GPU
    model = functools.cache(lambda: load_policy(model_dir, weights).to(device).eval())

    def fn(data: Dataset) -> Dataset:
        with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
            return behaviour.behaviour_shard(data, model(), pad_id, batch_size)

    return fn
