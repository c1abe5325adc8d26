"""TOPR: Tapered Off-Policy REINFORCE (Le Roux, Bellemare et al., 2025, arXiv 2503.14286).

Positive trajectories get a plain REINFORCE (SFT-like) term; negative ones get the
importance ratio to the behaviour policy mu = pi_ref, truncated to [0, 1] and held constant
(no gradient through it). As a loss to minimise, for the N responses of the step:

    R_i   = positive_reward if r_i is correct (nsa.contracts.is_correct) else negative_reward
    w_i   = 1                                          if R_i >= 0
          = sg( min(1, pi(y_i | x) / pi_ref(y_i | x)) ) if R_i < 0    (sequence-level ratio)
    L     = - 1/N sum_i w_i R_i 1/|y_i| sum_j log pi(y_ij | x, y_i<j)

The log-probability is a token mean per response, as in the BCPG objective this comparison
is run against (TOPR writes the sequence sum; the difference is a per-response scale). The
ratio is exp(min(0, sum_j log pi - log pi_ref)), which never overflows. TOPR needs no KL
term: a negative the policy already makes unlikely stops being pushed down.
"""

from __future__ import annotations

import torch

from nsa.contracts import LossOutput, PolicyBatch, is_correct


class TOPR:
    """Loss = L above, a share of the step: divided by ``batch.step_responses``."""

    def __init__(self, positive_reward: float = 1.0, negative_reward: float = -1.0) -> None:
        if positive_reward < 0 or negative_reward >= 0:
            raise ValueError(
                f"TOPR needs positive_reward >= 0 and negative_reward < 0, got {positive_reward}, {negative_reward}"
            )
        self.positive_reward = positive_reward
        self.negative_reward = negative_reward

    def __call__(self, batch: PolicyBatch, logprobs: torch.Tensor) -> LossOutput:
        mask = batch.response_mask.float()  # (B, T)
        positive = is_correct(batch.reward)  # (B,) the same rule as step_positives
        reward = torch.where(positive, self.positive_reward, self.negative_reward)  # (B,) R_i
        length = mask.sum(1).clamp(min=1)  # (B,) |y_i|
        seq_logratio = ((logprobs - batch.ref_token_logprobs) * mask).sum(1).detach()  # (B,)
        truncated = seq_logratio.clamp(max=0.0).exp()  # (B,) min(1, pi / pi_ref), no gradient
        weight = torch.where(positive, torch.ones_like(truncated), truncated)  # (B,) w_i
        mean_logprob = (logprobs * mask).sum(1) / length  # (B,)
        loss = -(weight * reward * mean_logprob).sum() / batch.step_responses
        negatives = (~positive).float()
        metrics = {
            "mean_logprob": mean_logprob.mean().detach(),
            # mean truncated ratio over this micro-batch's negatives (0 when it has none)
            "negative_ratio": (truncated * negatives).sum() / negatives.sum().clamp(min=1),
        }
        return LossOutput(loss, metrics)
