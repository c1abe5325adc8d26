"""BCPG and BCPG-NSA: behaviour-constrained policy gradient (arXiv 2505.14403, Stage 3).

The objective, maximised, for the G responses y_i to one question x:

    J = 1/G sum_i 1/|y_i| [ sum_j beta_ij (r_i - rbar) log pi(y_ij | x, y_i<j)
                            - tau/2 (log pi(y_i | x) - log pi_ref(y_i | x))^2 ]

rbar is the group's mean reward (no std division, no clipping); log pi(y_i | x) is the
summed sequence log-prob. beta_ij = ``beta`` on tokens of a consensus-correct step of a
negative response and 1 elsewhere. ``beta = 1`` is plain BCPG ("vanilla RL"); the paper's
BCPG-NSA uses beta = 0.5, tau = 1e-3. Only negatives have mined steps (``nsa.contracts.is_negative``,
the steps stage's rule); beta also needs the answer's advantage to be negative (r_i < rbar), so
that a mined step never has its reinforcement cut: with rewards of 0 and 1 the two rules agree.

The mean over responses runs over the whole optimizer step (``batch.step_responses``),
so the gradient is the same however the step is cut into micro-batches.

``per_token_behaviour`` swaps the behaviour term for the per-token variant the paper leaves
open, tau/2 sum_j (log pi(y_ij) - log pi_ref(y_ij))^2: it bounds every token's drift
instead of letting drifts of opposite signs cancel within a response.
"""

from __future__ import annotations

import torch

from nsa.contracts import LossOutput, PolicyBatch


class BCPG:
    """BCPG(-NSA) loss = -J. ``beta`` weighs mined steps of negatives; ``tau`` the behaviour term."""

    def __init__(self, beta: float = 0.5, tau: float = 1e-3, per_token_behaviour: bool = False) -> None:
        if not -1.0 <= beta <= 1.0:
            raise ValueError(f"BCPG beta must lie in [-1, 1], got {beta}")
        if tau < 0:
            raise ValueError(f"BCPG tau must be >= 0 (it pulls log-probs towards pi_ref's), got {tau}")
        self.beta = beta
        self.tau = tau
        self.per_token_behaviour = per_token_behaviour

    def __call__(self, batch: PolicyBatch, logprobs: torch.Tensor) -> LossOutput:
        mask = batch.response_mask.float()  # (B, T)
        negative = (batch.reward < batch.reward_mean).unsqueeze(1)  # (B, 1) advantage below 0
        mined = batch.nsa_mask & negative  # (B, T)
        weights = torch.where(mined, torch.full_like(mask, self.beta), mask) * mask  # (B, T) beta_ij
        advantage = (batch.reward - batch.reward_mean).unsqueeze(1)  # (B, 1)
        length = mask.sum(1).clamp(min=1)  # (B,) |y_i|
        policy_term = (weights * advantage * logprobs).sum(1)  # (B,)
        token_logratio = (logprobs - batch.ref_token_logprobs) * mask  # (B, T)
        seq_logratio = token_logratio.sum(1)  # (B,)
        drift = token_logratio.square().sum(1) if self.per_token_behaviour else seq_logratio.square()  # (B,)
        behaviour_term = 0.5 * self.tau * drift  # (B,)
        objective = (policy_term - behaviour_term) / length  # (B,)
        loss = -objective.sum() / batch.step_responses
        metrics = {
            "policy_term": (policy_term / length).mean().detach(),
            "behaviour_term": (behaviour_term / length).mean().detach(),
            "abs_logratio": (seq_logratio.abs() / length).mean().detach(),
            "mined_token_fraction": (mined.float().sum() / mask.sum().clamp(min=1)).detach(),
        }
        return LossOutput(loss, metrics)
