"""RFT: rejection-sampling fine-tuning, supervised learning on the correct responses only.

    L = - 1/N+ sum_{i: r_i = 1} 1/|y_i| sum_j log pi(y_ij | x, y_i<j)

N+ counts the correct responses of the whole optimizer step (``batch.step_positives``),
so the gradient does not depend on how the step is cut into micro-batches. The paper's
RFT baseline trains with lr 2.5e-6 for 6 epochs.
"""

from __future__ import annotations

import torch

from nsa.contracts import LossOutput, PolicyBatch, is_correct


class RFT:
    """Token-mean negative log-likelihood per correct response, averaged over correct responses."""

    def __call__(self, batch: PolicyBatch, logprobs: torch.Tensor) -> LossOutput:
        mask = batch.response_mask.float()  # (B, T)
        positive = is_correct(batch.reward).float()  # (B,) the same rule as step_positives
        length = mask.sum(1).clamp(min=1)  # (B,)
        nll = -(logprobs * mask).sum(1) / length  # (B,)
        loss = (nll * positive).sum() / max(batch.step_positives, 1.0)
        # metrics are means over this micro-batch's responses (the module averages them over the step)
        metrics = {"nll": nll.mean().detach(), "positive_fraction": positive.mean()}
        return LossOutput(loss, metrics)
