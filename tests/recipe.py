"""A small recipe for CLI tests: the tiny model, three problems, scripted answers."""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

DATA = Path(__file__).parent / "data" / "three_problems.jsonl"
REPO = Path(__file__).resolve().parents[1]
TWO = ("--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu")  # Lightning starts 2 processes
COMPUTED = re.compile(r"nsa: stage (\w+): (\d+) shards computed by 2 processes \((\d+), (\d+)\)")


@functools.cache
def migrated_store() -> Path:
    """An empty MLflow SQLite store with all of MLflow's migrations applied, made once per test
    process: migrating a new store takes about 2 s, copying this one a millisecond."""
    import mlflow

    folder = Path(tempfile.mkdtemp(prefix="nsa-tests-mlflow-"))
    atexit.register(shutil.rmtree, folder, True)
    mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db").search_experiments()
    return folder / "mlflow.db"


def tracking_uri(folder: Path) -> str:
    """The URI of ``folder``/mlflow.db, a copy of the migrated empty store unless it exists."""
    if not (folder / "mlflow.db").exists():
        shutil.copyfile(migrated_store(), folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


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
                "init_args": {"experiment_name": "tests", "tracking_uri": tracking_uri(tmp_path)},
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


def nsa(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``nsa <args>`` as a user runs it, in ``cwd``; its exit code and output."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [shutil.which("nsa"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def computed(stderr: str) -> dict[str, tuple[int, int]]:
    """Per stage, the shards each of 2 processes computed, from the lines process 0 prints."""
    return {m[1]: (int(m[3]), int(m[4])) for m in COMPUTED.finditer(stderr)}


def stage_rows(cache: Path, name: str) -> list[dict]:
    """The rows of the one stage ``name`` in ``cache``, shard by shard."""
    from datasets import concatenate_datasets, load_from_disk

    (folder,) = (cache / name).iterdir()
    shards = sorted(folder.glob("shard-*"), key=lambda p: int(p.name.removeprefix("shard-")))
    return concatenate_datasets([load_from_disk(str(p)) for p in shards]).to_list()
