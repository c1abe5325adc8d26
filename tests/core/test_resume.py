"""A run killed inside an optimizer step, mid-epoch, and resumed with ``--ckpt_path last``
ends with the same weights as a run that was never stopped.

8 rows, 3 responses a step and a 175-token budget: 3 steps an epoch, of one or two
micro-batches of one or two rows. 7 steps span three epochs; the killed run is SIGKILLed
after the first micro-batch of step 5, in the second epoch, and resumed from a checkpoint
saved either every step or at each epoch's end. AdamW and a linear LR schedule make the
optimizer and scheduler state part of the result.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import mlflow
import pytest
import torch
import yaml
from safetensors.torch import load_file

from nsa.batching import StepBatchSampler
from nsa.commands import NSACLI
from tests.recipe import tiny_recipe

KILLED_RUN = textwrap.dedent(
    """
    import sys
    from nsa.cli import main

    main(sys.argv[1:])
    """
)


class KillMidStep(L.Callback):
    """Records where checkpoints are saved; SIGKILLs its own process inside the step after ``kill_after``."""

    def __init__(self, kill_after: int = -1) -> None:
        self.kill_after = kill_after
        self.saves: set[tuple[int, bool]] = set()  # (global step, saved between optimizer steps)
        self._between_steps = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._between_steps = batch.last_in_step  # runs before ModelCheckpoint's hook (Lightning puts it last)
        if trainer.global_step == self.kill_after and not batch.last_in_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.saves.add((trainer.global_step, self._between_steps))


def recipe(folder: Path, model: str, checkpoint: dict, cache: Path, kill_after: int = -1) -> Path:
    """The tiny recipe with AdamW, a schedule, ``checkpoint``'s ModelCheckpoint and the kill callback."""
    path = tiny_recipe(folder, model, responses_per_step=3, tokens_per_micro_batch=175, cache_dir=str(cache))
    config = yaml.safe_load(path.read_text())
    config["trainer"].update(max_steps=7, enable_checkpointing=True)
    config["trainer"]["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(folder / "ckpt"), "save_last": True, **checkpoint},
        },
        {"class_path": f"{__name__}.KillMidStep", "init_args": {"kill_after": kill_after}},
    ]
    config["model"]["optimizer"] = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001}}
    config["model"]["lr_scheduler"] = {
        "class_path": "torch.optim.lr_scheduler.LinearLR",
        "init_args": {"start_factor": 1.0, "end_factor": 0.2, "total_iters": 7},
    }
    config["model"]["export_dir"] = str(folder / "policy")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def losses(folder: Path) -> list[dict[int, float]]:
    """train/loss by step, for each MLflow run in ``folder``'s database, oldest first."""
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id], order_by=["start_time ASC"])
    return [{m.step: m.value for m in client.get_metric_history(r.info.run_id, "train/loss")} for r in runs]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tiny_model) -> Path:
    """The run that is never stopped (its stage cache serves the others)."""
    folder = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow's artifacts go to ./mlruns
        cli = NSACLI(["fit", "--config", str(recipe(folder, tiny_model, {"every_n_train_steps": 1}, folder / "cache"))])
    assert (cli.trainer.global_step, cli.trainer.current_epoch) == (7, 3)
    return folder


@pytest.mark.parametrize(
    ("checkpoint", "saved_step", "saves_after"),
    [
        ({"every_n_train_steps": 1}, 4, {5, 6, 7}),  # resumes mid-epoch, between micro-batches of no step
        ({"every_n_epochs": 1}, 3, {6, 7}),  # resumes from the first epoch's end
    ],
)
@pytest.mark.multiprocess
def test_killed_mid_step_run_resumes_to_the_same_weights(
    tmp_path, tiny_model, whole, monkeypatch, checkpoint, saved_step, saves_after
):
    monkeypatch.chdir(tmp_path)
    killed = recipe(tmp_path, tiny_model, checkpoint, whole / "cache", kill_after=4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, "fit", "--config", str(killed)], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == saved_step

    resumed = recipe(tmp_path, tiny_model, checkpoint, whole / "cache")
    cli = NSACLI(["fit", "--config", str(resumed), "--ckpt_path", "last"])
    assert (cli.trainer.global_step, cli.trainer.current_epoch) == (7, 3)

    trained, start = load_file(whole / "policy/model.safetensors"), load_file(f"{tiny_model}/model.safetensors")
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    for key, value in load_file(tmp_path / "policy/model.safetensors").items():
        assert torch.equal(value, trained[key]), key

    (watch,) = [c for c in cli.trainer.callbacks if isinstance(c, KillMidStep)]
    assert watch.saves == {(step, True) for step in saves_after}  # never inside a step: its start is in no file

    (whole_losses,) = losses(whole)
    killed_losses, resumed_losses = losses(tmp_path)
    assert sorted(killed_losses) == [1, 2, 3, 4]
    assert resumed_losses == {s: v for s, v in whole_losses.items() if s > saved_step}


def test_sampler_state_resumes_its_epoch_only():
    lengths, positive = [5, 9, 3, 7, 8, 2, 6], [True, False] * 3 + [True]
    plan = list(StepBatchSampler(lengths, positive, 3, 12, seed=1, epoch=2))
    served = StepBatchSampler(lengths, positive, 3, 12, seed=1, epoch=2)
    taken = iter(served)
    next(taken), next(taken)
    state = served.state_dict()
    assert state == {"epoch": 2, "served": 2}

    resumed = StepBatchSampler(lengths, positive, 3, 12, seed=1, epoch=2)
    resumed.load_state_dict(state)
    assert len(resumed) == len(plan)  # Lightning's batch count goes on from its checkpoint
    assert list(resumed) == plan[2:] and list(resumed) == plan  # only the first pass resumes
    next_epoch = StepBatchSampler(lengths, positive, 3, 12, seed=1, epoch=3)
    next_epoch.load_state_dict(state)
    assert list(next_epoch) == list(StepBatchSampler(lengths, positive, 3, 12, seed=1, epoch=3))
