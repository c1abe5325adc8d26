"""NSADataModule: runs the data stages (cached) and serves token-budget micro-batches."""

from __future__ import annotations

import functools
import sys

import lightning as L
import torch

from nsa.batching import LACKING, ResumableLoader, RolloutRows, StepBatchSampler, collate, over_budget
from nsa.contracts import Consensus, Sampler, Segmenter, StepJudge, Verifier, is_correct
from nsa.errors import NSAError
from nsa.log import notice, warn
from nsa.logprobs import VARLEN_ATTENTION
from nsa.models import check_policy, load_tokenizer, policy_context, resolve_policy
from nsa.pipeline import Recipe, judge_names, run
from nsa.stages.behaviour import PRECISIONS
from nsa.stages.cache import StageOutput
from nsa.stages.problems import MATH_TEMPLATE
from nsa.stages.rollouts import check_template, drop_unusable, not_per_token, row_lengths, with_group_std
from nsa.team import Team, of_trainer

DEFAULT_TEMPLATE = MATH_TEMPLATE


def check_counts(**counts: int | None) -> None:
    """Each ``data.<name>`` is at least 1 (None: not set, where that is allowed)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise NSAError(f"data.{name} is {value}: it must be at least 1")


def check_judging(judges: list[StepJudge], consensus: Consensus) -> None:
    """Thresholds in [0, 1] (scores are probabilities), and a consensus names only configured judges."""
    names = judge_names(judges)
    for number, (name, judge) in enumerate(zip(names, judges)):
        if not 0.0 <= judge.threshold <= 1.0:
            raise NSAError(
                f"data.judges[{number}] ({name}) threshold is {judge.threshold}: it must lie in [0, 1] "
                "(a step is correct when its score >= threshold)"
            )
    chosen = getattr(consensus, "judges", None)  # a consensus that picks judges by name (Vote's judges)
    unknown = [name for name in chosen or [] if name not in names]
    if unknown:
        raise NSAError(
            f"data.consensus names {', '.join(unknown)}, which is not among data.judges ({', '.join(names)})"
        )


class NSADataModule(L.LightningDataModule):
    """Problems -> sampled, verified, segmented, judged answers -> training micro-batches.

    Args:
        problems: a .jsonl/.json/.parquet file or a dataset id loadable by ``datasets``.
        shared_cache_dir: ``cache_dir`` is on a filesystem every node sees: all processes of the
            job then share each data stage's shards. False: each node's processes share them,
            into the node's own cache.
        rollouts: a rollout file (``nsa generate --output``, or your own with the same
            columns) to train on instead of sampling; ``problems`` is then not read.
        sampler: draws G answers per problem from the behaviour policy.
        verifier: scores each answer's final result against the reference.
        segmenter: splits wrong answers into steps.
        judges: score each step; their verdicts are combined by ``consensus``.
        consensus: the rule that turns per-judge verdicts into one label per step.
        policy: the behaviour policy pi_ref (linked from ``model.policy``).
        question_field, answer_field: column names in ``problems``.
        split: the split to load when ``problems`` is a dataset id.
        max_problems: use only the first N problems.
        prompt_template: the user message; ``{question}`` is replaced.
        responses_per_step: responses per optimizer step (the paper: 512).
        tokens_per_micro_batch: tokens per forward pass: the rows' real tokens when they run
            without padding (``padding_free``), else rows x longest row.
        padding_free: run each micro-batch's rows as one sequence without padding, each row
            with its own position ids. null (auto): where the policy's attention keeps them
            apart (checked on the loaded policy before the first step) with a variable-length
            kernel (flash-attention, flex attention); else padded rows sorted by length, with a
            notice. true: with any attention that keeps them apart (sdpa and eager with a dense
            tokens x tokens mask), refused if none does. false: padded.
        reject_wrong_final_step: a negative's last step, where it states the final answer the
            verifier found wrong, is rejected whatever the judges say (they may pass its sound
            arithmetic: "so the answer is 600", for 6). The paper's PRM and LLM judges reject such
            a step anyway; false leaves it to the judges (an ablation).
        cache_dir: where stage outputs are cached by fingerprint.
        shard_size: problems per committed shard (a kill loses at most one shard).
        logprob_precision: precision of the pi_ref forward, linked from ``trainer.precision``.
        logprob_batch_size: responses per pi_ref forward.
        seed: shuffling seed (the sampler has its own).
        pairs: plan (correct, incorrect) pairs of one question (linked from the loss's ``pairs``).
        max_length: the longest prompt + answer trained on, in tokens; longer rows are dropped
            and counted (``data/dropped_too_long``). None: the policy's context.
    """

    def __init__(
        self,
        verifier: Verifier,
        segmenter: Segmenter,
        judges: list[StepJudge],
        consensus: Consensus,
        problems: str = "",
        sampler: Sampler | None = None,
        policy: str = "",
        question_field: str = "question",
        answer_field: str = "answer",
        split: str = "train",
        max_problems: int | None = None,
        prompt_template: str = DEFAULT_TEMPLATE,
        responses_per_step: int = 512,
        tokens_per_micro_batch: int = 8192,
        cache_dir: str = ".nsa_cache",
        shard_size: int = 16,
        logprob_precision: str = "32-true",
        logprob_batch_size: int = 8,
        seed: int = 0,
        pairs: bool = False,
        max_length: int | None = None,
        rollouts: str | None = None,
        shared_cache_dir: bool = False,
        padding_free: bool | None = None,
        reject_wrong_final_step: bool = True,
    ) -> None:
        super().__init__()
        if not problems and not rollouts:
            raise NSAError("set data.problems (a problem file or dataset id) or data.rollouts (a rollout file)")
        if sampler is None and not rollouts:
            raise NSAError("data.sampler is not set; name one (HFSampler, VLLMSampler) or give data.rollouts")
        if not judges:
            raise NSAError("data.judges is empty; name at least one step judge")
        check_policy(policy)
        check_counts(
            responses_per_step=responses_per_step,
            tokens_per_micro_batch=tokens_per_micro_batch,
            shard_size=shard_size,
            logprob_batch_size=logprob_batch_size,
            max_problems=max_problems,
            max_length=max_length,
        )
        check_template(prompt_template, "data.prompt_template")
        check_judging(judges, consensus)
        if sampler is not None and not rollouts and sampler.num_samples < 2:
            raise NSAError(
                f"data.sampler num_samples is {sampler.num_samples}: answers are scored against the others of "
                "their problem (the group mean), so it needs at least 2 answers per problem"
            )
        if logprob_precision not in PRECISIONS:
            raise NSAError(
                f"trainer.precision {logprob_precision} is not supported; use one of {', '.join(PRECISIONS)}"
            )
        self.recipe = Recipe(
            policy=policy,
            verifier=verifier,
            segmenter=segmenter,
            judges=judges,
            consensus=consensus,
            sampler=sampler,
            problems=problems,
            question_field=question_field,
            answer_field=answer_field,
            split=split,
            max_problems=max_problems,
            rollouts=rollouts,
            prompt_template=prompt_template,
            cache_dir=cache_dir,
            shared_cache_dir=shared_cache_dir,
            shard_size=shard_size,
            logprob_precision=logprob_precision,
            logprob_batch_size=logprob_batch_size,
            reject_wrong_final_step=reject_wrong_final_step,
        )
        self.responses_per_step, self.tokens_per_micro_batch = responses_per_step, tokens_per_micro_batch
        self.seed, self.pairs, self.max_length, self.padding_free = seed, pairs, max_length, padding_free
        self._setup_stats: dict[str, float] = {}
        self.columns: tuple[str, ...] = ()  # the loss's extra columns, known at setup
        self._noticed = False  # the padding-free notice, said once
        self.stages: list[StageOutput] = []

    def run_stages(self, team: Team | None = None) -> list[StageOutput]:
        """Run every data stage on ``team``'s processes (this one alone by default), or reuse
        the cached ones; every process gets the outputs."""
        team = team or Team.alone()
        with team.guard():  # an error on one process stops the others too
            self.stages = run(self.recipe, team)
            # nodes with caches of their own finish apart: none starts training's collectives,
            # which time out, while another node still runs its stages
            team.barrier("stages", job=True)
        return self.stages

    def setup(self, stage: str) -> None:
        """Runs on every process of the job: all of them share the data stages' work, then
        each plans its micro-batches. (Lightning's ``prepare_data`` would run on one process
        while the others wait, so nsa does not use it.)"""
        if self.trainer is not None and self.trainer.reload_dataloaders_every_n_epochs != 1:
            raise NSAError(
                "trainer.reload_dataloaders_every_n_epochs must be 1: each epoch plans its own micro-batches"
            )
        if not self.stages:
            self.run_stages(of_trainer(self.trainer, self.recipe.shared_cache_dir))
        folder = resolve_policy(self.recipe.policy)
        # the group's std, like its mean (the groups stage), is over all its answers, before any is dropped
        grouped = with_group_std(self.stages[-1].dataset)
        rows, self._setup_stats = drop_unusable(grouped, self.max_length or policy_context(folder))
        self._warn_dropped()
        if not len(rows):
            raise NSAError("no training rows left after filtering; see the stage statistics above")
        self.train_rows = rows
        self.columns = self._loss_columns()
        self.lengths = row_lengths(self.train_rows)
        self._warn_budget()
        self.pad_id = load_tokenizer(folder).pad_token_id

    def _loss_columns(self) -> tuple[str, ...]:
        """The extra columns the loss asks for (its ``columns``, see PolicyLoss), each checked
        against the training rows now, before training starts."""
        module = self.trainer.lightning_module if self.trainer else None
        loss = getattr(module, "loss", None)
        columns = tuple(getattr(loss, "columns", ()))
        missing = [c for c in columns if c not in self.train_rows.column_names]
        if missing:
            raise NSAError(
                f"loss {type(loss).__name__} asks for column(s) {', '.join(missing)} (its columns), which the "
                f"training rows lack; they have: {', '.join(self.train_rows.column_names)}"
            )
        for column in columns:
            if short := not_per_token(self.train_rows, column):
                raise NSAError(
                    f"loss {type(loss).__name__} reads column {column} per token, and {short} training rows have "
                    f"fewer or more values than answer tokens ({LACKING})"
                )
        return columns

    def _warn_dropped(self) -> None:
        nonfinite, too_long = self._setup_stats["dropped_nonfinite_ref"], self._setup_stats["dropped_too_long"]
        if nonfinite:
            warn(f"dropped {nonfinite:g} answers whose pi_ref log-probs are NaN or inf")
        if too_long:
            limit = self.max_length or "the policy's context"
            warn(f"dropped {too_long:g} answers longer than {limit} tokens (data.max_length)")

    def _warn_budget(self) -> None:
        """data.tokens_per_micro_batch against the longest row training will see: batching gives a row
        (a pair) over it a micro-batch of its own, over the budget; said once, before training."""
        budget = self.tokens_per_micro_batch
        over = over_budget(self.lengths, budget, self.pairs)
        if not over or (self.trainer is not None and not self.trainer.is_global_zero):
            return
        longest = max(self.lengths)
        pair, need = (", x 2 for a pair", 2 * longest) if self.pairs else ("", longest)
        warn(
            f"data.tokens_per_micro_batch is {budget}, below the longest row of {longest} tokens "
            f"(prompt + answer{pair}): {len(over)} of {len(self.lengths)} rows get a micro-batch of their own, "
            f"over the budget; raise it to at least {need}"
        )

    @property
    def stats(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for out in self.stages:
            merged.update(out.stats)
        return {**merged, **self._setup_stats}

    @property
    def fingerprints(self) -> dict[str, str]:
        return {out.name: out.fingerprint for out in self.stages}

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        positive = [is_correct(r) for r in self.train_rows["reward"]]
        groups = self.train_rows["group"] if self.pairs else None
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        packed = self._packs_rows()
        sampler = StepBatchSampler(
            self.lengths, positive, self.responses_per_step, self.tokens_per_micro_batch, self.seed, groups, world, rank
        )
        sampler.epoch = self.trainer.current_epoch if self.trainer else 0  # a new loader every epoch (see setup)
        sampler.packed = packed  # the plan counts real tokens, not rows x longest row
        return ResumableLoader(
            RolloutRows(self.train_rows),
            batch_sampler=sampler,
            collate_fn=functools.partial(collate, pad_id=self.pad_id, packed=packed, columns=self.columns),
        )

    def _packs_rows(self) -> bool:
        """Whether micro-batches run packed (see ``padding_free``). NSAModule probes its policy in
        on_fit_start, before Lightning asks for this loader. No trainer: padded, as planned alone."""
        module = self.trainer.lightning_module if self.trainer else None
        if self.padding_free is False or module is None:
            return False
        if self.padding_free and module.cannot_pack:
            raise NSAError(f"data.padding_free is true, and {module.cannot_pack}; set it to false or null (auto)")
        dense = module.attention not in VARLEN_ATTENTION
        if self.padding_free or not (module.cannot_pack or dense):
            return True
        why = module.cannot_pack or f"{module.attention} would score all pairs of a packed micro-batch's tokens"
        if self.trainer.is_global_zero and not self._noticed:
            self._noticed = True
            notice(
                f"data.padding_free: {why}; training on padded micro-batches sorted by length "
                "(flash_attention_2 or flex_attention in model.attn_implementation run them packed)"
            )
        return False

    def print_stats(self) -> None:
        width = max(map(len, self.stats), default=0)
        for key, value in self.stats.items():
            print(f"  {key:<{width}}  {value:g}", file=sys.stderr)
