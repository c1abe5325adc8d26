"""The contracts every plugin meets: typed Protocols, no base classes.

A plugin is a plain class with a fully typed ``__init__`` (the signature is its config
schema) and the one method its kind needs. Heavy libraries are imported inside methods so
that naming a plugin costs nothing until it runs.

Cache identity: a plugin's public attributes (those not starting with ``_``) are hashed
into the fingerprint of the stage it runs in. Keep run-time state (a loaded model, a
process pool) in ``_private`` attributes.

Two optional members any plugin may define: ``close()``, which nsa calls when the plugin's
stage is done (see ``closed_after``), and ``devices_per_engine``, the number of a node's
devices one of its engines spans (a tensor-parallel vLLM engine; see ``devices_per_engine``).
A sampler may also define ``prompt_room(model_dir)``, how long a prompt it can answer in full
(see ``prompt_room``); questions whose prompt does not fit are dropped before sampling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from datasets import Dataset

Span = tuple[int, int]

CORRECT_ABOVE = 0.5  # the one threshold between a right answer and a negative; see is_correct


def is_correct(reward):
    """The rule for a right answer, on a float or elementwise on a tensor: reward above 0.5.

    Every other answer is a negative, a reward of exactly 0.5 (say, half a test suite passed)
    included, so the two always add up to all answers: a negative's steps are segmented and
    judged, DPO may pair it as the rejected answer, RFT does not train on it. BCPG's beta has a
    rule of its own on top (see ``nsa.plugins.losses.bcpg``): the answer's advantage must be negative.
    """
    return reward > CORRECT_ABOVE


def passes(score: float, threshold: float) -> bool:
    """The rule for a judged step: correct when its score reaches the judge's ``threshold`` (the
    paper's lambda). The label stage, the inspector and judge-eval all read verdicts through it."""
    return score >= threshold


def is_negative(reward):
    """Not ``is_correct``: reward at or below 0.5, on a float or elementwise on a tensor."""
    return reward <= CORRECT_ABOVE


def release(plugin: object) -> None:
    """Calls the plugin's ``close()``, if it has one."""
    close = getattr(plugin, "close", None)
    if callable(close):
        close()


@contextlib.contextmanager
def closed_after(plugin: object) -> Iterator[None]:
    """Releases ``plugin`` when the block ends, even on an error: its model or vLLM process
    is gone before the next stage needs the memory."""
    try:
        yield
    finally:
        release(plugin)


def devices_per_engine(plugin: object) -> int:
    """How many of a node's devices one engine of ``plugin`` spans: its ``devices_per_engine``
    (a vLLM engine's tensor-parallel size), else 1. Only the process that leads each group of
    that many local processes runs the plugin's stage; the others wait."""
    return int(getattr(plugin, "devices_per_engine", 1))


class PromptRoom(NamedTuple):
    """How long a prompt a sampler answers in full: ``context`` tokens hold prompt and answer
    together, and ``answer`` of them are its answer budget. The option names are the sampler's
    own, for messages; ``context_option`` is None when the model's config sets the context."""

    context: int
    answer: int
    answer_option: str
    context_option: str | None = None

    @property
    def prompt_tokens(self) -> int:
        """The most tokens a prompt may have."""
        return max(0, self.context - self.answer)

    def fits(self, prompt_tokens: int) -> bool:
        """The one rule for which prompts are sampled: an answer of the full budget still fits
        after the prompt (a longer prompt would fail in the engine, or have its answers cut short)."""
        return prompt_tokens <= self.prompt_tokens


def prompt_room(sampler: object, model_dir: str) -> PromptRoom | None:
    """The sampler's ``prompt_room(model_dir)``, if it has one; None: any prompt is sampled
    (a scripted sampler, or one whose model does not say its context)."""
    room = getattr(sampler, "prompt_room", None)
    return room(model_dir) if callable(room) else None


@runtime_checkable
class Segmenter(Protocol):
    """Splits a response into steps: character spans that tile the text exactly."""

    def split(self, text: str) -> list[Span]: ...


class Outcome(NamedTuple):
    """A verifier's answer: the reward and why (``ok``, ``empty``, ``no_answer``, ``timeout``)."""

    reward: float
    status: str


@runtime_checkable
class Verifier(Protocol):
    """Scores final answers against references: one Outcome per response.

    A verifier holding resources (a process pool) may also define ``close()``; nsa calls it
    when the verify stage is done.
    """

    def verify(self, references: Sequence[str], responses: Sequence[str]) -> list[Outcome]: ...


class Completion(NamedTuple):
    """One sampled answer.

    ``token_ids`` are the generated ids as they came (EOS included when generated), never
    re-tokenised from text. ``logprobs[t]`` is the log-probability of ``token_ids[t]`` under
    the distribution it was drawn from: after temperature and top_p, as sampled.
    """

    token_ids: list[int]
    logprobs: list[float]


@runtime_checkable
class Sampler(Protocol):
    """Samples ``num_samples`` completions per prompt from the behaviour policy.

    Returns, per prompt, ``num_samples`` Completions. A sampler holding an engine (a vLLM
    process) may also define ``close()``; nsa calls it when the sampling stage is done, so
    its memory is free again before training. One with a bounded context may define
    ``prompt_room(model_dir) -> PromptRoom | None``: prompts that do not fit are never passed
    to ``sample``.
    """

    num_samples: int

    def sample(self, model_dir: str, prompt_ids: Sequence[Sequence[int]]) -> list[list[Completion]]: ...


@runtime_checkable
class Benchmark(Protocol):
    """A held-out problem set for ``nsa evaluate``, and how its answers are checked.

    ``load()`` returns a Dataset with string columns ``id``, ``question`` and ``answer``; the
    answer is the reference that ``verifier()`` reads (a number, a LaTeX expression, or a
    JSON list of tests for code). The plugin holds its own field mapping, so a benchmark loads
    from its hub id or from a local file of the same format. ``name`` prefixes its metrics
    (``eval/<name>/pass@1``); ``prompt_template`` is the user message, ``{question}`` replaced.
    """

    name: str
    prompt_template: str

    def load(self) -> Dataset: ...

    def verifier(self) -> Verifier: ...


@dataclass(frozen=True)
class StepItem:
    """One response to judge: its question, its text and its steps as character spans."""

    question: str
    response: str
    spans: Sequence[Span]


@runtime_checkable
class StepJudge(Protocol):
    """Scores every step of each response in [0, 1]; ``None`` means unjudged.

    ``threshold`` turns a score into a verdict (``passes``: correct when score >= threshold). It is
    applied after the scores are cached, so changing it re-runs no model.

    A judge holding a model (or a vLLM process) may also define ``close()``; nsa calls it
    when that judge's stage is done, so its memory is free for the next judge and training.
    """

    threshold: float

    def score(self, items: Sequence[StepItem]) -> list[list[float | None]]: ...


@runtime_checkable
class Consensus(Protocol):
    """Combines per-judge verdicts (``verdicts[judge_name][step]``) into one label per step."""

    def combine(self, verdicts: Mapping[str, Sequence[bool | None]]) -> list[bool]: ...


@dataclass
class PolicyBatch:
    """One micro-batch of responses, right-padded, in input-token coordinates.

    Position t of a (B, T) tensor refers to token ``input_ids[:, t]``; per-token
    log-probs at t are log pi(input_ids[t] | input_ids[:t]).
    """

    input_ids: torch.Tensor  # (B, T) long: prompt + response + padding
    attention_mask: torch.Tensor  # (B, T) long
    response_mask: torch.Tensor  # (B, T) bool: response tokens (the trained targets)
    nsa_mask: torch.Tensor  # (B, T) bool: tokens in a consensus-correct step of a negative (is_negative)
    reward: torch.Tensor  # (B,) float: outcome reward r_i
    reward_mean: torch.Tensor  # (B,) float: group mean reward rbar
    reward_std: torch.Tensor  # (B,) float: group reward standard deviation (sample), for GRPO
    ref_token_logprobs: torch.Tensor  # (B, T) float32: log pi_ref per token, 0 off-response
    step_responses: float  # responses in the whole optimizer step (all micro-batches, ranks)
    step_positives: float  # of which are is_correct
    last_in_step: bool  # the optimizer steps after this micro-batch
    question_ids: list[str]
    partner: torch.Tensor  # (B,) long: row of this response's pair in the micro-batch, -1 if none
    packed: bool = False  # the forward may run the rows without their padding (the (B, T) layout stays)
    # the columns the loss asked for by name (its ``columns``, see PolicyLoss): a per-token
    # column as (B, T) float in input coordinates, 0 off the response; a per-answer number as (B,)
    columns: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    """A micro-batch's share of the step loss, already divided by the step's count."""

    loss: torch.Tensor  # () scalar to minimise
    metrics: dict[str, torch.Tensor]  # means over the micro-batch's responses; averaged over the step


@runtime_checkable
class PolicyLoss(Protocol):
    """Maps a batch and the policy's per-token log-probs (B, T) to a loss.

    The loss must be this micro-batch's exact share of the optimizer step's objective:
    normalise by ``batch.step_responses`` (or ``step_positives``), never by the
    micro-batch's own size, so gradients do not depend on how the step is split.

    A pairwise loss sets the class attribute ``pairs = True``: the data module then plans
    (correct, incorrect) pairs of the same question, never split across micro-batches, and
    ``batch.partner`` links each row to its pair (``step_responses`` = 2 x the step's pairs).

    A loss that needs a column of the training rows that ``PolicyBatch`` does not carry names it
    in the class attribute ``columns`` (a tuple of names), and reads ``batch.columns[name]``. Any
    column of the final stage can be asked for, core unchanged: ``response_logprobs``, the
    sampler's own per-token log-probs (for an importance weight to the behaviour policy mu
    rather than pi_ref), or a column a custom stage or a rollout file added. One value per
    response token arrives as (B, T) in input coordinates (like ``ref_token_logprobs``), a number
    per answer as (B,). A column the rows lack stops ``nsa fit`` before training, naming it.
    """

    def __call__(self, batch: PolicyBatch, logprobs: torch.Tensor) -> LossOutput: ...
