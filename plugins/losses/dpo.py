"""DPO: direct preference optimisation (Rafailov et al., 2023, arXiv 2305.18290) on pairs of a
correct (y_w) and an incorrect (y_l) answer to the same question, with the stored behaviour
policy as the reference model.

    L = - 1/P sum_pairs log sigmoid( beta_dpo [ (log pi(y_w|x) - log pi_ref(y_w|x))
                                               - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

log pi(y|x) is the summed sequence log-probability; P counts the pairs of the optimizer
step. The paper's DPO baseline uses beta_dpo = 0.5. Pairs are drawn by the data module each
epoch (``pairs = True``): every answer in at most one pair, so a question with 3 correct and
29 wrong answers gives 3 pairs per epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nsa.contracts import LossOutput, PolicyBatch, is_correct


class DPO:
    """Loss = L above, a share of the step: divided by the step's pairs (``step_responses / 2``)."""

    pairs = True

    def __init__(self, beta: float = 0.5) -> None:
        if not beta > 0:
            raise ValueError(f"DPO beta must be > 0, got {beta}")
        self.beta = beta

    def __call__(self, batch: PolicyBatch, logprobs: torch.Tensor) -> LossOutput:
        mask = batch.response_mask.float()  # (B, T)
        logratio = ((logprobs - batch.ref_token_logprobs) * mask).sum(1)  # (B,) log pi(y)/pi_ref(y)
        chosen = torch.nonzero(is_correct(batch.reward) & (batch.partner >= 0)).squeeze(1)  # (P,) rows of y_w
        rejected = batch.partner[chosen]  # (P,) rows of y_l
        margin = self.beta * (logratio[chosen] - logratio[rejected])  # (P,)
        loss = -F.logsigmoid(margin).sum() / (batch.step_responses / 2)
        metrics = {
            "margin": margin.mean().detach() if len(margin) else torch.zeros(()),
            "pair_accuracy": (margin > 0).float().mean() if len(margin) else torch.zeros(()),
        }
        return LossOutput(loss, metrics)
