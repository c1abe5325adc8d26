"""`nsa fit` end to end on the tiny model: MLflow run, config artifact, stage statistics,
exported policy, and gradients that do not depend on how a step is cut into micro-batches.
"""

from __future__ import annotations

import json

import mlflow
import torch
from safetensors.torch import load_file

from nsa.cli import main
from tests.recipe import tiny_recipe


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_fit_logs_config_stats_and_exports_policy(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")  # the 2-step fit takes < 1 s
    main(["fit", "--config", str(tiny_recipe(tmp_path, tiny_model))])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert "class_path: nsa.plugins.losses.bcpg.BCPG" in open(config).read()
    assert run.data.metrics["data/negatives"] == 6 and run.data.metrics["data/steps"] == 14
    assert {"stage/sample", "stage/label", "stage/behaviour"} <= set(run.data.params)
    (judged,) = (tmp_path / "cache" / "judge").iterdir()  # each judge's stage is logged too
    assert run.data.params["stage/judge/ArithmeticJudge"] == judged.name
    # each stage's dataset is an input of the run, its digest the stage's fingerprint
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert inputs["nsa-judge/ArithmeticJudge"].dataset.digest == judged.name
    assert inputs["nsa-sample"].dataset.digest == run.data.params["stage/sample"]
    train = inputs["nsa-train"]
    assert [t.value for t in train.tags if t.key == "mlflow.data.context"] == ["training"]
    assert json.loads(train.dataset.profile)["num_rows"] == 8
    assert "system/cpu_utilization_percentage" in run.data.metrics  # system metrics, on by default
    assert "train/loss" in run.data.metrics and "train/ref_drift" in run.data.metrics
    trained, start = weights(tmp_path / "policy"), load_file(f"{tiny_model}/model.safetensors")
    assert any(not torch.equal(trained[k], start[k]) for k in start)


def test_step_is_the_same_however_it_is_split(tmp_path, tiny_model, monkeypatch):
    """One SGD step over all 8 rows: as one padded micro-batch through the full logits (nsa
    before chunking), the same through the chunked output layer, as one packed micro-batch
    without padding, or one row per micro-batch.

    Lengths are ragged (prompts of 8-10 tokens, answers of 6-16), so a per-micro-batch
    mean would weigh rows differently, and a packed row that saw another would score other
    log-probs; the exported weights must match anyway.
    """
    monkeypatch.chdir(tmp_path)
    results = []
    runs = [(100_000, "false", "null"), (100_000, "false", "auto"), (100_000, "true", "auto"), (1, "true", "1")]
    for tokens, free, chunk in runs:
        recipe = tiny_recipe(tmp_path, tiny_model, responses_per_step=8, tokens_per_micro_batch=tokens)
        export = tmp_path / f"policy-{tokens}-{free}-{chunk}"
        flags = [f"--model.export_dir={export}", f"--data.padding_free={free}", f"--model.logprob_chunk_tokens={chunk}"]
        main(["fit", "--config", str(recipe), "--trainer.max_steps=1", *flags])
        results.append(weights(export))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id], order_by=["start_time ASC"])
    padding = [run.data.metrics["train/padding_fraction"] for run in runs]
    # 8 ragged rows padded to the longest in one micro-batch; packed, or one row per micro-batch, pads nothing
    assert 0.0 < padding[0] == padding[1] < 0.2 and padding[2] == padding[3] == 0.0
    start = load_file(f"{tiny_model}/model.safetensors")
    full = results[0]
    assert any(not torch.equal(full[k], start[k]) for k in start)
    for other in results[1:]:
        for key in full:
            torch.testing.assert_close(other[key], full[key], atol=1e-6, rtol=1e-5)


def test_every_epoch_runs_all_its_steps(tmp_path, tiny_model, monkeypatch):
    """8 rows, 4 responses a step: 2 steps an epoch, so 3 epochs make 6 steps.

    The rows are 73 to 88 tokens long; with a 166-token budget two rows share a micro-batch
    only when both are at most 83, so each epoch's shuffle gives another count of
    micro-batches (7, 8, 8). An epoch cut at the first epoch's length would lose its last step.
    """
    from nsa.batching import plan_epoch
    from nsa.commands import NSACLI

    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(tmp_path, tiny_model, responses_per_step=4, tokens_per_micro_batch=166)
    cli = NSACLI(["fit", "--config", str(recipe), "--trainer.max_steps=-1", "--trainer.max_epochs=3"])
    rows = cli.datamodule.train_rows
    lengths = [len(p) + len(r) for p, r in zip(rows["prompt_ids"], rows["response_ids"])]
    counts = [len(plan_epoch(lengths, [r > 0.5 for r in rows["reward"]], 4, 166, seed)) for seed in range(3)]
    assert len(set(counts)) > 1  # the premise: epochs differ in length
    assert cli.trainer.global_step == 6


def test_every_loss_of_the_comparison_trains_by_name(tmp_path, tiny_model, monkeypatch):
    """Table 3's losses are one override each. DPO's ``pairs`` reaches the data module through
    the CLI link, so its micro-batches hold whole pairs (collate raises on a split pair); the
    tiny data's 3 mixed questions give min(right, wrong) pairs each."""
    from nsa.commands import NSACLI

    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(tmp_path, tiny_model, tokens_per_micro_batch=40)
    start = load_file(f"{tiny_model}/model.safetensors")
    for loss in ("RFT", "GRPOOffline", "TOPR", "DPO"):
        export = tmp_path / f"policy-{loss}"
        main(["fit", "--config", str(recipe), f"--model.loss={loss}", f"--model.export_dir={export}"])
        trained = weights(export)
        assert any(not torch.equal(trained[k], start[k]) for k in start), loss
    dpo = "--model.loss=nsa.plugins.losses.dpo.DPO"
    assert NSACLI(["--config", str(recipe), dpo], run=False).datamodule.pairs is True
    assert NSACLI(["--config", str(recipe)], run=False).datamodule.pairs is False


def test_a_checkpoint_rebuilds_its_plugins_and_policy(tmp_path, tiny_model, monkeypatch):
    """The checkpoint keeps the loss as class_path + init_args (not a pickle): loading it
    builds a DPO with the recipe's beta and the trained policy, equal to the export."""
    from nsa.module import NSAModule

    monkeypatch.chdir(tmp_path)
    export, ckpt = tmp_path / "policy", tmp_path / "ckpt"
    args = ["fit", "--config", str(tiny_recipe(tmp_path, tiny_model)), "--trainer.max_steps=1"]
    args += ["--model.loss=nsa.plugins.losses.dpo.DPO", "--model.loss.init_args.beta=0.25"]
    args += ["--trainer.enable_checkpointing=true", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint"]
    main([*args, f"--trainer.callbacks.dirpath={ckpt}", f"--model.export_dir={export}"])
    [path] = list(ckpt.glob("*.ckpt"))
    saved = torch.load(path, weights_only=False)["hyper_parameters"]["loss"]
    assert saved == {"class_path": "nsa.plugins.losses.dpo.DPO", "init_args": {"beta": 0.25}}
    module = NSAModule.load_from_checkpoint(path)
    assert type(module.loss).__name__ == "DPO" and module.loss.beta == 0.25
    exported = weights(export)
    state = module.policy.model.state_dict()  # the scorer holds the Hugging Face model
    assert all(torch.equal(state[k], exported[k]) for k in exported)


def test_prepare_logs_its_stages_and_system_metrics_to_its_own_run(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    main(["prepare", "--config", str(tiny_recipe(tmp_path, tiny_model))])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.data.tags["nsa.command"] == "prepare" and run.info.status == "FINISHED"
    (sampled,) = (tmp_path / "cache" / "sample").iterdir()
    assert run.data.params["stage/sample"] == sampled.name and run.data.metrics["data/negatives"] == 6
    assert {i.dataset.name for i in run.inputs.dataset_inputs} >= {"nsa-sample", "nsa-label", "nsa-train"}
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
