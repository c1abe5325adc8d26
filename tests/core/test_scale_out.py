"""``nsa prepare`` and ``nsa evaluate`` on two processes (DDP over gloo, on CPU): both take
shards of every data stage, and the outputs equal one process's, row for row. (``nsa fit``
on two processes: tests/core/test_ddp.py with scripted answers, and
tests/core/test_generate_vllm.py with an engine per process.)

Eight problems whose answers cycle 5, 6, 7, 100 get the four scripted answers (\\boxed{5},
\\boxed{6}, \\boxed{7}, none; tests/scripted.py): six questions are mixed (the 100s are all
wrong), so 24 answers are kept. With ``shard_size: 1`` the stages have, by hand:
sample 8 shards, verify 8 (4 answers each), groups 1, then 24 answers in shards of 4 = 6
for segment, behaviour, judge and label. The one-process runs happen in this process; the
two-process runs are ``nsa`` commands started by Lightning's launcher, as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nsa.cli import main
from nsa.commands import NSACLI
from nsa.errors import NSAError
from tests.recipe import TWO, computed, nsa, stage_rows, tiny_recipe

REPO = Path(__file__).resolve().parents[2]
SHARDS = {"sample": 8, "verify": 8, "groups": 1, "segment": 6, "behaviour": 6, "judge": 6, "label": 6}
COUNTING = {"class_path": "tests.counting.CountingSampler", "init_args": {"delay_s": 0.3}}


def eight_problems(tmp_path: Path) -> str:
    path = tmp_path / "eight.jsonl"
    rows = [{"id": f"p{i}", "question": f"Problem {i}?", "answer": ["5", "6", "7", "100"][i % 4]} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def stages(recipe: Path, cache: Path, *overrides: str) -> list:
    """Every stage's output, run (or read) in this process."""
    cli = NSACLI(["--config", str(recipe), f"--data.cache_dir={cache}", *overrides], run=False)
    return cli.datamodule.run_stages()


def same(outputs: list, expected: list) -> None:
    assert [o.fingerprint for o in outputs] == [o.fingerprint for o in expected]
    for out, want in zip(outputs, expected):
        assert out.dataset.to_dict() == want.dataset.to_dict(), out.name


@pytest.fixture(scope="module")
def expected(tmp_path_factory, tiny_model) -> list:
    """The stages of an uninterrupted one-process run."""
    folder = tmp_path_factory.mktemp("one")
    return stages(tiny_recipe(folder, tiny_model, problems=eight_problems(folder), sampler=COUNTING), folder / "cache")


def log_lines(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.multiprocess
def test_one_process_begins_two_continue_one_finishes(tmp_path, tiny_model, expected):
    """A stage moves between process counts and survives a SIGKILL:
    1. one process stops at its third sampling call: 2 of 8 shards committed;
    2. two processes continue: they reuse the 2, each draws some of the rest, no shard twice,
       until process 1 SIGKILLs itself at its second call (Lightning's launcher then stops the
       job); what either committed stays;
    3. one process finishes: it draws only the shards still missing.
    Every stage then equals an uninterrupted one-process run's, row for row."""
    recipe = tiny_recipe(tmp_path, tiny_model, problems=eight_problems(tmp_path), sampler=COUNTING)
    cache, log = tmp_path / "cache", tmp_path / "calls.txt"
    with pytest.raises(NSAError, match="stopped at call 3"):
        stages(recipe, cache, "--data.sampler.init_args.stop=raise:0:3")
    killed = nsa(
        tmp_path,
        "prepare",
        "--config",
        str(recipe),
        *TWO,
        f"--data.sampler.init_args.log={log}",
        "--data.sampler.init_args.stop=kill:1:2",
    )
    assert killed.returncode != 0
    assert "nsa: stage sample: reusing 2 of 8 finished shards" in killed.stderr
    drawn = log_lines(log)
    assert {rank for rank, _ in drawn} == {"0", "1"} and len({key for _, key in drawn}) == len(drawn)
    (sample,) = (cache / "sample").iterdir()
    committed = len(list(sample.glob("shard-*")))
    assert 2 + len(drawn) - 1 <= committed < 8  # all but what was in flight when the job stopped

    log.unlink()
    finished = stages(recipe, cache, f"--data.sampler.init_args.log={log}")
    assert len(log_lines(log)) == 8 - committed  # only the missing shards
    same(finished, expected)


@pytest.mark.multiprocess
def test_a_plugin_that_raises_on_one_process_stops_both(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path, tiny_model, problems=eight_problems(tmp_path), sampler=COUNTING)
    done = nsa(
        tmp_path, "prepare", "--config", str(recipe), *TWO, "--data.sampler.init_args.stop=raise:1:1", timeout=120
    )
    assert done.returncode != 0
    message = "CountingSampler stopped at call 1 on process 1"
    assert f"nsa: error: {message}" in done.stderr  # process 1's own
    assert f"nsa: error: process 1 failed: {message}" in done.stderr  # process 0 stops with it


@pytest.mark.multiprocess
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


def test_an_engine_larger_than_the_node_is_one_line_before_any_stage(tmp_path, tiny_model, capsys):
    """On a CPU a node's devices are its processes: one process cannot lead an engine of 2."""
    recipe = tiny_recipe(tmp_path, tiny_model)
    sampler = ["--data.sampler=VLLMSampler", "--data.sampler.init_args.engine.tensor_parallel_size=2"]
    with pytest.raises(SystemExit):
        main(["prepare", "--config", str(recipe), *sampler])
    assert (
        "nsa: error: VLLMSampler: engine.tensor_parallel_size 2 must divide the 1 processes" in capsys.readouterr().err
    )
    assert not (tmp_path / "cache").exists()  # no stage began
