"""BCPG(-NSA) and RFT losses: golden numbers by hand, and micro-batch-invariant gradients."""

from __future__ import annotations

import math

import pytest
import torch

from nsa.batching import Slot, collate
from nsa.contracts import PolicyBatch
from nsa.logprobs import token_logprobs
from nsa.models import load_policy
from nsa.plugins.losses.bcpg import BCPG
from nsa.plugins.losses.dpo import DPO
from nsa.plugins.losses.grpo import GRPOOffline
from nsa.plugins.losses.rft import RFT
from nsa.plugins.losses.topr import TOPR

# Two responses to one question, T = 4, right-padded:
#   row 0 (positive, r=1): prompt [5] + response [6, 7] + pad [0]
#   row 1 (negative, r=0): prompt [5] + response [8, 9, 10]; its token at t=2 is mined (nsa_mask)
# Policy log-probs carry junk (-7, -9) off the response, which every loss must ignore.
LOGPROBS = [[-7.0, -1.0, -2.0, -9.0], [-7.0, -0.5, -1.5, -3.0]]
REF = [[0.0, -1.0, -1.0, 0.0], [0.0, -1.0, -1.5, -1.0]]


def hand_batch(step_responses: float = 2.0, step_positives: float = 1.0, nsa_on_positive: bool = False):
    nsa = [[False, nsa_on_positive, False, False], [False, False, True, False]]
    return PolicyBatch(
        input_ids=torch.tensor([[5, 6, 7, 0], [5, 8, 9, 10]]),
        attention_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
        response_mask=torch.tensor([[False, True, True, False], [False, True, True, True]]),
        nsa_mask=torch.tensor(nsa),
        reward=torch.tensor([1.0, 0.0]),
        reward_mean=torch.tensor([0.5, 0.5]),
        reward_std=torch.tensor([0.5, 0.5]),
        ref_token_logprobs=torch.tensor(REF),
        step_responses=step_responses,
        step_positives=step_positives,
        last_in_step=True,
        question_ids=["q", "q"],
        partner=torch.tensor([1, 0]),  # a (correct, incorrect) pair of question q
    )


def logprobs() -> torch.Tensor:
    return torch.tensor(LOGPROBS)


@pytest.mark.parametrize(
    ("beta", "expected"),
    [(0.5, 0.021145833333), (1.0, -0.041354166667), (-0.5, 0.146145833333)],
)
def test_bcpg_golden(beta: float, expected: float) -> None:
    """Loss = -1/G sum_i 1/|y_i| [sum_j beta_ij A_i lp_ij - tau/2 (sum_j lp_ij - ref_ij)^2], tau = 1e-3.

    Row 0: A = 1 - 0.5 = +0.5, |y| = 2, weights (1, 1)
      policy    = 0.5 * (-1 - 2)                      = -1.5
      logratio  = (-1 - -1) + (-2 - -1)                = -1
      behaviour = 0.5 * 1e-3 * 1                       = 0.0005
      objective = (-1.5 - 0.0005) / 2                  = -0.75025
    Row 1: A = 0 - 0.5 = -0.5, |y| = 3, weights (1, beta, 1)
      policy    = -0.5 * (-0.5 + beta * -1.5 - 3)      = 1.75 + 0.75 beta
      logratio  = (-0.5 - -1) + (-1.5 - -1.5) + (-3 - -1) = -1.5
      behaviour = 0.5 * 1e-3 * 2.25                    = 0.001125
      objective = (1.75 + 0.75 beta - 0.001125) / 3
    Loss = -(obj0 + obj1) / G, G = step_responses = 2:
      beta = 0.5:  obj1 = 2.123875 / 3 = 0.707958333;  loss = -(-0.75025 + 0.707958333) / 2 = 0.021145833
      beta = 1:    obj1 = 2.498875 / 3 = 0.832958333;  loss = -(-0.75025 + 0.832958333) / 2 = -0.041354167
      beta = -0.5: obj1 = 1.373875 / 3 = 0.457958333;  loss = -(-0.75025 + 0.457958333) / 2 = 0.146145833
    """
    out = BCPG(beta=beta, tau=1e-3)(hand_batch(), logprobs())
    assert out.loss.shape == ()
    assert out.loss.item() == pytest.approx(expected, abs=1e-7)


def test_bcpg_metrics_golden() -> None:
    """Per-response means of the terms above (beta = 0.5):

    policy_term    = (-1.5 / 2 + 2.125 / 3) / 2        = (-0.75 + 0.708333) / 2 = -0.0208333
    behaviour_term = (0.0005 / 2 + 0.001125 / 3) / 2   = (0.00025 + 0.000375) / 2 = 0.0003125
    abs_logratio   = (1 / 2 + 1.5 / 3) / 2             = 0.5
    mined_token_fraction = 1 mined token / 5 response tokens = 0.2
    """
    metrics = BCPG(beta=0.5, tau=1e-3)(hand_batch(), logprobs()).metrics
    assert metrics["policy_term"].item() == pytest.approx(-0.0208333333, abs=1e-7)
    assert metrics["behaviour_term"].item() == pytest.approx(0.0003125, abs=1e-9)
    assert metrics["abs_logratio"].item() == pytest.approx(0.5, abs=1e-7)
    assert metrics["mined_token_fraction"].item() == pytest.approx(0.2, abs=1e-7)


def test_bcpg_beta_one_ignores_the_nsa_mask() -> None:
    """beta = 1 is vanilla BCPG: the same loss with the mined token unmarked."""
    batch = hand_batch()
    with_mask = BCPG(beta=1.0)(batch, logprobs()).loss
    batch.nsa_mask = torch.zeros_like(batch.nsa_mask)
    without = BCPG(beta=1.0)(batch, logprobs()).loss
    assert with_mask.item() == pytest.approx(without.item(), abs=1e-9)
    # while beta = 0.5 does see the mask: 0.021145833 (masked) vs -0.041354167 (unmasked)
    assert BCPG(beta=0.5)(batch, logprobs()).loss.item() == pytest.approx(-0.041354166667, abs=1e-7)


def test_bcpg_nsa_mask_on_a_positive_is_ignored() -> None:
    """Only negatives are augmented: marking a positive's token changes nothing (0.021145833)."""
    out = BCPG(beta=0.5)(hand_batch(nsa_on_positive=True), logprobs())
    assert out.loss.item() == pytest.approx(0.021145833333, abs=1e-7)
    assert out.metrics["mined_token_fraction"].item() == pytest.approx(0.2, abs=1e-7)


def test_bcpg_divides_by_the_step_count() -> None:
    """The same rows as a share of a 4-response step: half the loss, 0.021145833 / 2."""
    out = BCPG(beta=0.5)(hand_batch(step_responses=4.0), logprobs())
    assert out.loss.item() == pytest.approx(0.0105729167, abs=1e-7)


def test_bcpg_behaviour_term_vanishes_at_the_reference() -> None:
    """With log pi == log pi_ref on the response, the behaviour term and its gradient are 0.

    Then loss = -(policy0 / 2 + policy1 / 3) / 2 with the reference as log-probs (beta = 0.5):
      policy0 = 0.5 * (-1 - 1)                     = -1
      policy1 = -0.5 * (-1 + 0.5 * -1.5 - 1)       = 1.375
      loss    = -(-1 / 2 + 1.375 / 3) / 2 = -(-0.5 + 0.458333) / 2 = 0.0208333
    even with a huge tau (10): any behaviour contribution would show.
    """
    lp = torch.tensor(REF, requires_grad=True)
    out = BCPG(beta=0.5, tau=10.0)(hand_batch(), lp)
    assert out.metrics["behaviour_term"].item() == 0.0
    assert out.metrics["abs_logratio"].item() == 0.0
    assert out.loss.item() == pytest.approx(0.0208333333, abs=1e-7)
    out.loss.backward()
    # d loss / d lp_ij = -beta_ij A_i / (|y_i| G): row 0 -> -0.5/4 = -0.125; row 1 -> +0.5/6 (x beta)
    expected = torch.tensor([[0.0, -0.125, -0.125, 0.0], [0.0, 1 / 12, 0.5 / 12, 1 / 12]])
    assert torch.allclose(lp.grad, expected, atol=1e-7)


def test_bcpg_per_token_behaviour_golden() -> None:
    """tau/2 sum_j (lp_ij - ref_ij)^2 instead of the squared sum (beta = 0.5, tau = 1e-3):

    row 0: 0^2 + (-1)^2 = 1          -> 0.0005     (as the sequence form: one nonzero token)
    row 1: 0.5^2 + 0^2 + (-2)^2 = 4.25 -> 0.002125 (sequence form: (-1.5)^2 = 2.25 -> 0.001125)
    obj0 = (-1.5 - 0.0005) / 2 = -0.75025;  obj1 = (1.75 + 0.375 - 0.002125) / 3 = 0.707625
    loss = -(-0.75025 + 0.707625) / 2 = 0.0213125
    """
    out = BCPG(beta=0.5, tau=1e-3, per_token_behaviour=True)(hand_batch(), logprobs())
    assert out.loss.item() == pytest.approx(0.0213125, abs=1e-7)


def test_grpo_offline_golden() -> None:
    """A_i = (r_i - 0.5) / (0.5 + 0) = +1, -1 (eps = 0); rho = exp(lp - ref); epsilon = 0.2.

    Row 0 (A = +1): logratio (0, -1), rho (1, e^-1 = 0.36787944), clip (1, 0.8)
      min(rho A, clip A) = (1, 0.36787944)            -> sum 1.36787944 / 2 = 0.68393972
    Row 1 (A = -1): logratio (0.5, 0, -2), rho (1.64872127, 1, 0.13533528), clip (1.2, 1, 0.8)
      min(-rho, -clip) = (-1.64872127, -1, -0.8)      -> sum -3.44872127 / 3 = -1.14957376
    loss = -(0.68393972 - 1.14957376) / 2 = 0.23281702
    With kl_coef 0.1, k3 = e^-lr + lr - 1 per token:
      row 0: (0, e - 2 = 0.71828183)                   -> 0.71828183 / 2 = 0.35914091
      row 1: (e^-0.5 - 0.5 = 0.10653066, 0, e^2 - 3 = 4.38905610) -> 4.49558676 / 3 = 1.49852892
      loss = -((0.68393972 - 0.03591409) + (-1.14957376 - 0.14985289)) / 2 = 0.32570051
    Clip fraction: row 0 holds 1 of 2 tokens (0.368 < 0.8), row 1 2 of 3 -> (0.5 + 0.6667) / 2.
    """
    out = GRPOOffline(epsilon=0.2, eps=0.0)(hand_batch(), logprobs())
    assert out.loss.item() == pytest.approx(0.23281702, abs=1e-7)
    assert out.metrics["clip_fraction"].item() == pytest.approx(0.58333333, abs=1e-7)
    with_kl = GRPOOffline(epsilon=0.2, kl_coef=0.1, eps=0.0)(hand_batch(), logprobs())
    assert with_kl.loss.item() == pytest.approx(0.32570051, abs=1e-7)


def test_grpo_offline_gradient_stops_outside_the_clip() -> None:
    """d loss / d lp_ij = -A_i rho_ij / (|y_i| G) where the unclipped term is the min, else 0.

    row 0, t=1: rho 1 (inside):    -1 * 1 / 4          = -0.25
    row 0, t=2: rho 0.368, A > 0, min is rho A (unclipped side) -> -0.36787944 / 4 = -0.09196986
    row 1, t=1: rho 1.649, A < 0, min is -rho (unclipped side)  -> +1.64872127 / 6 = 0.27478688
    row 1, t=2: rho 1 (inside):    +1 / 6              = 0.16666667
    row 1, t=3: rho 0.135, A < 0, min is -0.8 (the clip) -> 0
    """
    lp = logprobs().requires_grad_(True)
    GRPOOffline(epsilon=0.2, eps=0.0)(hand_batch(), lp).loss.backward()
    expected = torch.tensor([[0.0, -0.25, -0.09196986, 0.0], [0.0, 0.27478688, 0.16666667, 0.0]])
    assert torch.allclose(lp.grad, expected, atol=1e-7)


def test_topr_golden() -> None:
    """R = +1 (positive), -1 (negative); the negative's weight is min(1, pi/pi_ref), no gradient.

    Row 0: w = 1, mean lp = (-1 - 2) / 2 = -1.5             -> w R mean = -1.5
    Row 1: seq logratio = 0.5 + 0 - 2 = -1.5, w = e^-1.5 = 0.22313016
           mean lp = (-0.5 - 1.5 - 3) / 3 = -1.66666667     -> w R mean = 0.37188360
    loss = -(-1.5 + 0.37188360) / 2 = 0.56405820
    Gradient: row 0 -1/(2*2) = -0.25 per token; row 1 +0.22313016/(3*2) = 0.03718836 per token.
    """
    lp = logprobs().requires_grad_(True)
    out = TOPR()(hand_batch(), lp)
    assert out.loss.item() == pytest.approx(0.56405820, abs=1e-7)
    assert out.metrics["negative_ratio"].item() == pytest.approx(0.22313016, abs=1e-7)
    out.loss.backward()
    expected = torch.tensor([[0.0, -0.25, -0.25, 0.0], [0.0, 0.03718836, 0.03718836, 0.03718836]])
    assert torch.allclose(lp.grad, expected, atol=1e-7)


def test_topr_ratio_is_capped_at_one() -> None:
    """A negative the policy likes more than pi_ref did (logratio > 0) weighs 1, not e^x."""
    batch = hand_batch()
    batch.ref_token_logprobs = batch.ref_token_logprobs - 5.0  # pi / pi_ref = e^15 on row 1
    out = TOPR()(batch, logprobs())
    assert out.metrics["negative_ratio"].item() == 1.0
    assert out.loss.item() == pytest.approx(-(-1.5 + 1.66666667) / 2, abs=1e-7)


def test_dpo_golden() -> None:
    """One pair: y_w = row 0, y_l = row 1; beta_dpo = 0.5; P = step_responses / 2 = 1.

    logratio_w = (-1 - -1) + (-2 - -1)              = -1
    logratio_l = (-0.5 - -1) + (-1.5 - -1.5) + (-3 - -1) = -1.5
    margin     = 0.5 * (-1 - -1.5)                 = 0.25
    loss       = -log sigmoid(0.25) = log(1 + e^-0.25) = 0.57593942
    d loss / d lp = -beta sigmoid(-0.25) = -0.5 * 0.43782350 = -0.21891175 on y_w's tokens,
    +0.21891175 on y_l's; 0 off the responses.
    """
    lp = logprobs().requires_grad_(True)
    out = DPO(beta=0.5)(hand_batch(), lp)
    assert out.loss.item() == pytest.approx(0.57593942, abs=1e-7)
    assert out.metrics["margin"].item() == pytest.approx(0.25) and out.metrics["pair_accuracy"].item() == 1.0
    out.loss.backward()
    g = 0.21891175
    assert torch.allclose(lp.grad, torch.tensor([[0.0, -g, -g, 0.0], [0.0, g, g, g]]), atol=1e-7)
    # the same pair as a share of a step of 4 pairs (8 responses): a quarter of the loss
    assert DPO(beta=0.5)(hand_batch(step_responses=8.0), logprobs()).loss.item() == pytest.approx(0.57593942 / 4)


def test_dpo_rows_without_a_partner_do_not_count() -> None:
    """A micro-batch with no complete pair contributes exactly 0."""
    batch = hand_batch()
    batch.partner = torch.tensor([-1, -1])
    assert DPO()(batch, logprobs()).loss.item() == 0.0


@pytest.mark.parametrize("beta", [1.5, -1.01, 2.0, math.nan])
def test_bcpg_rejects_beta_outside_range(beta: float) -> None:
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        BCPG(beta=beta)


@pytest.mark.parametrize("beta", [-1.0, 0.0, 1.0])
def test_bcpg_accepts_beta_bounds(beta: float) -> None:
    assert BCPG(beta=beta).beta == beta


def test_rft_golden() -> None:
    """Only the positive (row 0) counts: nll0 = -(-1 - 2) / 2 = 1.5.

    loss = 1.5 / step_positives: 1.5 for 1 positive in the step, 0.75 for 2 (the other one
    in another micro-batch). The negative's log-probs (-0.5, -1.5, -3) and the junk off the
    response play no part in the loss. The metrics are means over both rows:
    nll1 = -(-0.5 - 1.5 - 3) / 3 = 5/3, so nll = (1.5 + 5/3) / 2 = 1.583333; positives 1 of 2.
    """
    out = RFT()(hand_batch(step_positives=1.0), logprobs())
    assert out.loss.item() == pytest.approx(1.5, abs=1e-7)
    assert out.metrics["nll"].item() == pytest.approx(1.5833333, abs=1e-6)
    assert out.metrics["positive_fraction"].item() == 0.5
    assert RFT()(hand_batch(step_positives=2.0), logprobs()).loss.item() == pytest.approx(0.75, abs=1e-7)


def test_rft_no_positive_is_zero() -> None:
    """A micro-batch of negatives only contributes 0 (and no division by a zero count)."""
    batch = hand_batch(step_positives=0.0)
    batch.reward = torch.tensor([0.0, 0.0])
    out = RFT()(batch, logprobs())
    assert out.loss.item() == 0.0
    assert math.isfinite(out.metrics["nll"].item()) and out.metrics["positive_fraction"].item() == 0.0


# --- gradients do not depend on how a step is cut into micro-batches -------------------------

# (group, prompt, response, reward, group mean, nsa_mask): ragged prompts and responses
ROWS = [
    ("a", [3, 4], [5, 6, 7], 1.0, 0.5, [0, 0, 0]),
    ("a", [3, 4], [8], 0.0, 0.5, [1]),
    ("b", [9], [10, 11, 12, 13, 14], 0.0, 1 / 3, [0, 1, 1, 0, 0]),
    ("b", [9], [15, 16], 1.0, 1 / 3, [0, 0]),
    ("b", [9], [17, 18, 19, 20], 0.0, 1 / 3, [1, 0, 0, 1]),
]


def rows() -> list[dict]:
    """Training rows as the final stage stores them; ref log-probs far from the tiny policy's."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for group, prompt, response, reward, mean, nsa in ROWS:
        ref = (-3.0 - torch.rand(len(response), generator=gen)).tolist()
        out.append(
            {
                "group": group,
                "prompt_ids": prompt,
                "response_ids": response,
                "reward": reward,
                "reward_mean": mean,
                "reward_std": 0.7 if group == "a" else 0.6,
                "nsa_mask": [bool(m) for m in nsa],
                "ref_logprobs": ref,
            }
        )
    return out


def grads_of(model, batches: list[PolicyBatch], loss) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    for batch in batches:
        logprobs = token_logprobs(model, batch.input_ids, batch.attention_mask)
        loss(batch, logprobs).loss.backward()
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


@pytest.fixture(scope="module")
def policy(tiny_model):
    return load_policy(tiny_model).train()


@pytest.mark.parametrize(
    "loss",
    [BCPG(beta=0.5, tau=0.1), BCPG(beta=-0.5, tau=1e-3, per_token_behaviour=True), RFT(), GRPOOffline(), TOPR()],
    ids=["bcpg-nsa", "bcpg-per-token", "rft", "grpo-offline", "topr"],
)
def test_grad_full_batch_equals_summed_micro_batches(policy, loss) -> None:
    """One step of 5 ragged rows: one micro-batch vs five of one row, step counts (5, 2) kept.

    The negative control cuts the same step with each micro-batch's own counts (1 response,
    0 or 1 positive), the per-micro-batch mean that PITFALLS.md warns about: it must differ.
    """
    data = rows()
    n, n_pos = len(data), sum(r["reward"] > 0.5 for r in data)
    whole = collate([(r, Slot(i, n, n_pos, True)) for i, r in enumerate(data)], pad_id=0)
    assert whole.input_ids.shape == (5, 6)  # ragged: padding is really there
    micro = [collate([(r, Slot(i, n, n_pos, i == n - 1))], pad_id=0) for i, r in enumerate(data)]
    full_grads = grads_of(policy, [whole], loss)
    micro_grads = grads_of(policy, micro, loss)
    assert len(full_grads) == len(micro_grads) > 0
    assert any(g.abs().max() > 1e-4 for g in full_grads)
    for a, b in zip(full_grads, micro_grads):
        assert torch.allclose(a, b, atol=1e-6)

    local = [collate([(r, Slot(i, 1, int(r["reward"] > 0.5), True))], pad_id=0) for i, r in enumerate(data)]
    local_grads = grads_of(policy, local, loss)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full_grads, local_grads))


def test_dpo_grad_full_batch_equals_pairs_apart(policy) -> None:
    """DPO on the 5 ragged rows: the planner draws one pair per question (a: rows 0-1, b: row 3
    with row 2 or 4). One micro-batch of both pairs vs one micro-batch per pair (a small token
    budget): the same gradient, since the loss divides by the step's pairs, not the micro-batch's."""
    from nsa.batching import plan_epoch

    data = rows()
    lengths = [len(r["prompt_ids"]) + len(r["response_ids"]) for r in data]
    positive = [r["reward"] > 0.5 for r in data]
    groups = [r["group"] for r in data]

    def batches(budget: int) -> list[PolicyBatch]:
        plan = plan_epoch(lengths, positive, 4, budget, seed=0, groups=groups)
        return [collate([(data[s.row], s) for s in micro], pad_id=0) for micro in plan]

    together, apart = batches(1000), batches(1)
    assert [len(b.question_ids) for b in together] == [4] and [len(b.question_ids) for b in apart] == [2, 2]
    full, split = grads_of(policy, together, DPO()), grads_of(policy, apart, DPO())
    assert any(g.abs().max() > 1e-4 for g in full)
    for a, b in zip(full, split, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
