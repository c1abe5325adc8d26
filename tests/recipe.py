"""A small recipe for CLI tests: the tiny model, three problems, scripted answers."""

from __future__ import annotations

from pathlib import Path

import yaml

DATA = Path(__file__).parent / "data" / "three_problems.jsonl"


def tiny_recipe(tmp_path: Path, model: str, **data_overrides) -> Path:
    recipe = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "logger": {
                "class_path": "lightning.pytorch.loggers.MLFlowLogger",
                "init_args": {"experiment_name": "tests", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
            },
        },
        "model": {
            "policy": model,
            "loss": {"class_path": "nsa.plugins.losses.bcpg.BCPG", "init_args": {"beta": 0.5, "tau": 0.001}},
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01}},
            "export_dir": str(tmp_path / "policy"),
        },
        "data": {
            "problems": str(DATA),
            "sampler": {"class_path": "tests.scripted.ScriptedSampler"},
            "verifier": {
                "class_path": "nsa.plugins.verifiers.math_verify.MathVerifier",
                "init_args": {"workers": 1},
            },
            "segmenter": {"class_path": "nsa.plugins.segmenters.paragraph.ParagraphSegmenter"},
            "judges": [{"class_path": "nsa.plugins.judges.arithmetic.ArithmeticJudge"}],
            "consensus": {"class_path": "nsa.plugins.consensus.vote.Vote", "init_args": {"rule": "all"}},
            "responses_per_step": 4,
            "tokens_per_micro_batch": 64,
            "shard_size": 1,
            "cache_dir": str(tmp_path / "cache"),
            **data_overrides,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
