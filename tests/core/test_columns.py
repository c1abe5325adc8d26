"""A loss asks for a column ``PolicyBatch`` does not carry, core unchanged: ``BehaviourTOPR``
below is TOPR with the importance weight to the sampler's own probabilities (the rows'
``response_logprobs``) instead of pi_ref's. It is a plain class in this file, named by its
class path, as a third-party loss would be."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch

from nsa.batching import Slot, collate
from nsa.cli import main
from nsa.contracts import LossOutput, PolicyBatch, is_correct
from nsa.errors import NSAError
from tests.core.test_batching import row
from tests.recipe import tiny_recipe


class BehaviourTOPR:
    """TOPR, R = +1 / -1, with w_i = min(1, pi(y_i) / mu(y_i)) for negatives, mu the sampler."""

    columns = ("response_logprobs",)

    def __call__(self, batch: PolicyBatch, logprobs: torch.Tensor) -> LossOutput:
        mask = batch.response_mask.float()  # (B, T)
        mu = batch.columns["response_logprobs"]  # (B, T) log mu per token, 0 off the answer
        positive = is_correct(batch.reward)  # (B,)
        reward = torch.where(positive, 1.0, -1.0)  # (B,)
        seq_logratio = ((logprobs - mu) * mask).sum(1).detach()  # (B,) log pi(y) / mu(y)
        weight = torch.where(positive, torch.ones_like(seq_logratio), seq_logratio.clamp(max=0.0).exp())  # (B,)
        mean_logprob = (logprobs * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B,)
        loss = -(weight * reward * mean_logprob).sum() / batch.step_responses
        return LossOutput(loss, {"mu_weight": weight[~positive].mean() if (~positive).any() else weight.mean()})


class AsksForNothingThere(BehaviourTOPR):
    columns = ("value_estimate",)


def two_rows():
    """Row 0: right, prompt [1], answer [2, 3], mu log-probs [-1, -2]; row 1: wrong, prompt
    [1, 1], answer [4], mu log-prob [-0.5]."""
    correct = {**row([1], [2, 3], [0, 0], [0.0, 0.0], reward=1.0), "response_logprobs": [-1.0, -2.0]}
    wrong = {**row([1, 1], [4], [0], [0.0], reward=0.0), "response_logprobs": [-0.5]}
    return [(correct, Slot(0, 2, 1, True)), (wrong, Slot(1, 2, 1, True))]


def test_the_column_arrives_per_token_in_input_coordinates():
    batch = collate(two_rows(), pad_id=0, columns=("response_logprobs", "reward"))
    assert batch.columns["response_logprobs"].tolist() == [[0.0, -1.0, -2.0], [0.0, 0.0, -0.5]]
    assert batch.columns["reward"].tolist() == [1.0, 0.0]  # a number per answer: (B,)
    assert collate(two_rows(), pad_id=0).columns == {}  # nothing asked, nothing built


def test_behaviour_topr_golden_value():
    """Policy log-probs -1 at every position. Row 0 (right): w 1, R 1, mean log-prob
    (-1 - 1) / 2 = -1, term -1. Row 1 (wrong): log pi/mu = -1 - (-0.5) = -0.5, w = e^-0.5 =
    0.606531, R -1, mean log-prob -1, term +0.606531. Loss = -(-1 + 0.606531) / 2 = 0.196735."""
    batch = collate(two_rows(), pad_id=0, columns=BehaviourTOPR.columns)
    out = BehaviourTOPR()(batch, torch.full(batch.input_ids.shape, -1.0))
    assert out.loss.item() == pytest.approx((1 - math.exp(-0.5)) / 2, abs=1e-6) == pytest.approx(0.196735, abs=1e-6)
    assert out.metrics["mu_weight"].item() == pytest.approx(math.exp(-0.5))


def test_a_per_token_column_of_the_wrong_length_is_named():
    items = two_rows()
    items[1][0]["response_logprobs"] = []  # a rollout file without the sampler's log-probs
    with pytest.raises(NSAError, match="column response_logprobs has 0 values for an answer of 1 tokens"):
        collate(items, pad_id=0, columns=("response_logprobs",))


def test_fit_hands_the_sampler_logprobs_to_the_loss(tmp_path, tiny_model, monkeypatch, capsys):
    """A column the rows lack stops ``nsa fit`` after the data stages, before training, naming it;
    the stages are cached, and the run with the loss that reads ``response_logprobs`` reuses them.
    The scripted sampler's log-probs are 0 (mu = 1 for each of its tokens), so against mu a
    negative's weight is pi(y) < 1 at the first step, where against pi_ref (TOPR's own) it is 1."""
    monkeypatch.chdir(tmp_path)
    recipe = str(tiny_recipe(tmp_path, tiny_model))
    with pytest.raises(SystemExit):
        main(["fit", "--config", recipe, f"--model.loss={__name__}.AsksForNothingThere"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nsa: error:")]
    assert "loss AsksForNothingThere asks for column(s) value_estimate" in line and "response_logprobs" in line
    main(["fit", "--config", recipe, f"--model.loss={__name__}.BehaviourTOPR", "--trainer.max_steps=1"])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id], "attributes.status = 'FINISHED'")
    assert 0.0 < runs[0].data.metrics["train/mu_weight"] < 0.5  # pi(y) of a many-token answer of a random model
