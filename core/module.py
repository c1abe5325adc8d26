"""NSAModule: the training step of offline policy optimisation, top to bottom.

forward -> per-token log-probs -> loss plugin -> backward -> (last micro-batch of the
step) clip, optimizer step. Manual optimisation, because micro-batches are formed by
token budget and a step holds a varying number of them; the loss plugins already divide by
the step's response count, so gradients are summed, never averaged, across micro-batches.
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from nsa.contracts import PolicyBatch, PolicyLoss
from nsa.errors import NSAError
from nsa.log import warn
from nsa.logprobs import DEFAULT_CHUNK, PolicyScorer, check_chunk_size, check_chunkable, head_modifiers, packing_leaks
from nsa.models import check_attention, check_policy, load_policy, load_tokenizer, resolve_policy


def shard(policy: PolicyScorer) -> torch.nn.Module:
    """Under Lightning's FSDP, make each decoder layer and then the whole scorer an FSDP unit.

    The training step runs backward inside ``training_step``, i.e. inside the forward of
    the root FSDP module; the root must therefore own no parameters, or FSDP asserts that
    its forward has not finished. Outside FSDP's wrapping context ``wrap`` returns the
    module unchanged. The scorer is the root, so its forward (the log-probs) runs with the root's
    parameters gathered: the embeddings and the output layer the chunked path multiplies by.
    """
    from torch.distributed.fsdp.wrap import wrap

    layer_names = set(getattr(policy.model, "_no_split_modules", None) or [])
    for name, module in list(policy.named_modules()):
        if type(module).__name__ in layer_names:
            parent_name, _, child = name.rpartition(".")
            setattr(policy.get_submodule(parent_name), child, wrap(module))
    return wrap(policy)


def full_state(policy: torch.nn.Module) -> tuple[torch.nn.Module, dict | None]:
    """The Hugging Face model inside the scorer ``policy`` and its full state dict (gathered on
    rank 0 under FSDP, its keys without the scorer's ``model.``)."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not isinstance(policy, FSDP):
        return policy.model, None
    config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(policy, StateDictType.FULL_STATE_DICT, config):
        state = policy.state_dict()
    return policy.module.model, {key.removeprefix("model."): value for key, value in state.items()}


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=5e-7, weight_decay=0.0)


def check_optimizer(optimizer: OptimizerCallable) -> None:
    """The optimizer's own checks, and a learning rate above 0, before any data stage runs:
    built over one throwaway parameter, it costs nothing."""
    try:
        built = optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as err:
        raise NSAError(f"model.optimizer: {err}; fix its init_args") from None
    for group in built.param_groups:
        lr = group.get("lr")
        if isinstance(lr, (int, float)) and lr <= 0:
            raise NSAError(f"model.optimizer: lr is {lr}; it must be > 0, or the policy never changes")


class NSAModule(L.LightningModule):
    """Trains ``policy`` with ``loss``.

    Args:
        policy: a model folder, a hub id, or ``pkg:<package>/<file>.gguf``.
        loss: the policy loss plugin (BCPG, RFT, ...).
        optimizer: builds the optimizer from the parameters (default AdamW, lr 5e-7).
        lr_scheduler: optional; stepped once per optimizer step.
        max_grad_norm: clip the gradient norm per step (0 disables).
        gradient_checkpointing: trade compute for activation memory.
        export_dir: where the trained policy is saved as a Hugging Face folder at the end.
        logprob_chunk_tokens: the output layer's rows per chunk: log-probs without the full
            (tokens, vocabulary) float32 logits, each chunk recomputed in the backward. A number
            (at most ``data.tokens_per_micro_batch``); ``auto``: 1024, or the whole micro-batch
            when smaller; null: the model's own forward and its full logits.
        attn_implementation: the policy's attention in training (null: transformers' default,
            sdpa). Packed rows (``data.padding_free``) run as variable-length sequences under
            ``flash_attention_2`` or ``flex_attention`` (GPU); sdpa and eager separate them with a
            dense (tokens x tokens) block-diagonal mask.
    """

    def __init__(
        self,
        policy: str,
        loss: PolicyLoss,
        optimizer: OptimizerCallable = adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        max_grad_norm: float = 1.0,
        gradient_checkpointing: bool = False,
        export_dir: str | None = None,
        logprob_chunk_tokens: int | Literal["auto"] | None = "auto",
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__()
        check_policy(policy)
        check_attention(attn_implementation)
        check_chunk_size(logprob_chunk_tokens)
        check_optimizer(optimizer)
        # under LightningCLI this stores the plugins as class_path + init_args: a checkpoint rebuilds them
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.policy_spec = policy
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.max_grad_norm = max_grad_norm
        self.gradient_checkpointing = gradient_checkpointing
        self.export_dir = export_dir
        self.attn_implementation = attn_implementation
        self.chunk_tokens = DEFAULT_CHUNK if logprob_chunk_tokens == "auto" else logprob_chunk_tokens
        self.policy: torch.nn.Module | None = None  # the PolicyScorer (FSDP-wrapped under FSDP)
        self.attention = attn_implementation or "sdpa"  # the policy's, once loaded
        self.cannot_pack: str | None = "the policy is not loaded"  # why packed rows would mix, or None (on_fit_start)
        self._reset_step()

    def configure_model(self) -> None:
        """Load the policy late, so sharded strategies can wrap it as it is built."""
        if self.policy is not None:
            return
        folder = resolve_policy(self.policy_spec)
        model = load_policy(folder, attn_implementation=self.attn_implementation).train()  # dropout off, as pi_ref
        if self.chunk_tokens is not None:
            check_chunkable(model, "model.logprob_chunk_tokens")
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.policy = shard(PolicyScorer(model, self.chunk_tokens))

    def on_fit_start(self) -> None:
        """Before the data module plans micro-batches: can they run without padding? A probe
        of two packed rows (every process runs it: under FSDP a forward is a collective)."""
        model = getattr(self.policy, "module", self.policy).model  # inside FSDP's wrapper, if any
        self.attention = model.config._attn_implementation
        self.cannot_pack = None
        if head_modifiers(model):
            self.cannot_pack = f"its config sets {', '.join(head_modifiers(model))}"
        elif packing_leaks(self.policy, model.config.vocab_size):
            self.cannot_pack = f"its attention ({self.attention}) lets packed rows attend to each other"

    def on_train_end(self) -> None:
        if not self.export_dir:
            return
        model, state = full_state(self.policy)  # collective under FSDP: every rank takes part
        if self.trainer.is_global_zero:
            model.save_pretrained(self.export_dir, state_dict=state)
            load_tokenizer(resolve_policy(self.policy_spec)).save_pretrained(self.export_dir)
            print(f"nsa: trained policy saved to {self.export_dir}")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.policy.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def on_train_start(self) -> None:
        # ModelCheckpoint forgets the step it saved last: resumed at a saved step, it would save again after
        # the next micro-batch, inside an optimizer step whose partial gradients no checkpoint holds
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback._last_global_step_saved = self.global_step

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._step_rows:  # the step's gradients so far are not saved: a resume would step without them
            warn(
                f"checkpoint saved inside optimizer step {self.global_step + 1}; resuming from it "
                "is not exact. Save between steps: ModelCheckpoint(every_n_train_steps=N)"
            )

    def on_train_epoch_start(self) -> None:
        if self._step_rows:  # an epoch ended inside a step: drop it rather than mix it into the next
            warn(f"dropping an unfinished optimizer step ({self._step_rows} responses)")
            self.optimizers().zero_grad()
            self._reset_step()

    def training_step(self, batch: PolicyBatch, batch_idx: int) -> torch.Tensor:
        if batch.packed and self.cannot_pack:
            raise NSAError(f"data.padding_free: a packed micro-batch came, and {self.cannot_pack}; set it to false")
        logprobs = self.policy(batch.input_ids, batch.attention_mask, packed=batch.packed)  # (B, T) float32
        out = self.loss(batch, logprobs)
        value = out.loss.item()
        if self._any_process_nonfinite(value):
            what = f"loss is {value}" if not math.isfinite(value) else "another process's loss is NaN or inf"
            where = f" (questions {', '.join(batch.question_ids)})" if not math.isfinite(value) else ""
            raise NSAError(
                f"{what} at step {self.global_step}{where}; "
                "check the behaviour log-probs of these questions and the learning rate"
            )
        # DDP and FSDP average gradients over processes; each loss is its process's share of the
        # step's sum, so scale back up: the update is then the same on 1 process or on N
        self.manual_backward(out.loss * self.trainer.world_size)
        self._accumulate(value, out.metrics, batch, logprobs.detach())
        if batch.last_in_step:
            self._optimizer_step()
        return out.loss

    def _any_process_nonfinite(self, value: float) -> bool:
        """Whether this loss, or any other process's, is NaN or inf. Every process must stop
        together: one that raised alone would leave the others waiting in a collective."""
        bad = torch.tensor(0.0 if math.isfinite(value) else 1.0, device=self.device)
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return bool(bad.item() > 0)

    def _optimizer_step(self) -> None:
        optimizer = self.optimizers()
        if self.max_grad_norm > 0:
            self._clip(optimizer)
        optimizer.step()
        optimizer.zero_grad()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self._log_step()

    def _clip(self, optimizer) -> None:
        if hasattr(self.policy, "clip_grad_norm_"):  # FSDP root unit (see shard): it knows the global norm
            self.policy.clip_grad_norm_(self.max_grad_norm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")

    def _accumulate(self, loss: float, metrics: dict, batch: PolicyBatch, logprobs: torch.Tensor) -> None:
        """Sum the step's loss shares; average metrics over its responses."""
        rows = int(batch.response_mask.any(1).sum())  # a null row (padding for a process) is no response
        mask = batch.response_mask  # (B, T)
        drift = ((logprobs - batch.ref_token_logprobs).abs() * mask).sum() / mask.sum().clamp(min=1)
        self._step_loss += loss
        self._step_rows += rows
        real = int(batch.attention_mask.sum())  # tokens that are not padding
        self._step_real += real
        self._step_padded += real if batch.packed else batch.attention_mask.numel()  # tokens the forward computes
        for key, value in {**metrics, "ref_drift": drift}.items():
            self._step_metrics[key] = self._step_metrics.get(key, 0.0) + float(value) * rows

    def _log_step(self) -> None:
        """One point per optimizer step, whatever the micro-batch split and the process count."""
        names = list(self._step_metrics)
        local = [self._step_loss, self._step_rows, self._step_real, self._step_padded, *self._step_metrics.values()]
        totals = torch.tensor(local, dtype=torch.float64, device=self.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        loss, rows, real, padded, *sums = totals.tolist()  # summed over processes
        metrics = {f"train/{k}": v / max(rows, 1) for k, v in zip(names, sums)}
        metrics["train/loss"] = loss
        metrics["train/padding_fraction"] = 1.0 - real / max(padded, 1)
        self.log("train/loss", loss, prog_bar=True, logger=False)
        for logger in self.loggers:  # x axis: optimizer steps, not Lightning's micro-batch counter
            logger.log_metrics(metrics, step=self.global_step)
        if self.global_step == 1 and metrics["train/ref_drift"] > 1e-2:
            warn(
                f"at the first step the policy differs from the stored behaviour log-probs by "
                f"{metrics['train/ref_drift']:.3g} nats per token; were they computed with another model or dtype?"
            )
        self._reset_step()

    def _reset_step(self) -> None:
        self._step_loss, self._step_rows, self._step_metrics = 0.0, 0, {}
        self._step_real, self._step_padded = 0, 0
