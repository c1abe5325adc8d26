"""GRPO-offline: GRPO's clipped-ratio objective on the fixed groups (Shao et al., 2024,
DeepSeekMath, arXiv 2402.03300), with the stored behaviour policy pi_ref as pi_old.

The objective, maximised, for the G responses y_i to one question:

    A_i     = (r_i - mean(r)) / (std(r) + eps)                      group-normalised advantage
    rho_ij  = pi(y_ij | x, y_i<j) / pi_ref(y_ij | x, y_i<j)          per-token ratio
    J       = 1/G sum_i 1/|y_i| sum_j [ min(rho_ij A_i, clip(rho_ij, 1 - epsilon, 1 + epsilon) A_i)
                                        - kl_coef * KL_ij ]
    KL_ij   = pi_ref/pi - log(pi_ref/pi) - 1                         (the k3 estimator GRPO uses)

std is the sample standard deviation of the group's rewards (as TRL's GRPOTrainer), computed
over all the group's responses when the data module is set up, the same rows as the mean: an
answer dropped from training (too long, a broken pi_ref) still counts in both. Offline there is no pi_old
separate from pi_ref: the clip bounds how far the policy moves from the data's sampler.
``kl_coef`` defaults to 0 (the clip alone; DeepSeekMath used 0.04).
"""

from __future__ import annotations

import torch

from nsa.contracts import LossOutput, PolicyBatch


class GRPOOffline:
    """Loss = -J above, a share of the step: divided by ``batch.step_responses``."""

    def __init__(self, epsilon: float = 0.2, kl_coef: float = 0.0, eps: float = 1e-4) -> None:
        if not 0.0 < epsilon < 1.0:
            raise ValueError(f"GRPOOffline epsilon must lie in (0, 1), got {epsilon}")
        self.epsilon = epsilon
        self.kl_coef = kl_coef
        self.eps = eps

    def __call__(self, batch: PolicyBatch, logprobs: torch.Tensor) -> LossOutput:
        mask = batch.response_mask.float()  # (B, T)
        advantage = ((batch.reward - batch.reward_mean) / (batch.reward_std + self.eps)).unsqueeze(1)  # (B, 1)
        logratio = (logprobs - batch.ref_token_logprobs) * mask  # (B, T), 0 off the response
        ratio = logratio.exp()  # (B, T)
        clipped = ratio.clamp(1.0 - self.epsilon, 1.0 + self.epsilon)  # (B, T)
        surrogate = torch.minimum(ratio * advantage, clipped * advantage) * mask  # (B, T)
        kl = (torch.exp(-logratio) + logratio - 1.0) * mask  # (B, T) k3, >= 0
        length = mask.sum(1).clamp(min=1)  # (B,) |y_i|
        objective = (surrogate - self.kl_coef * kl).sum(1) / length  # (B,)
        loss = -objective.sum() / batch.step_responses
        outside = ((ratio - clipped).abs() > 0) & batch.response_mask  # (B, T) tokens the clip holds
        metrics = {
            "surrogate": (surrogate.sum(1) / length).mean().detach(),
            "kl": (kl.sum(1) / length).mean().detach(),
            "clip_fraction": (outside.float().sum(1) / length).mean().detach(),
        }
        return LossOutput(loss, metrics)
