"""``nsa evaluate`` and the math benchmark plugins, offline on small local copies of each format.

Answers come from the scripted sampler (tests/scripted.py): the same four for every problem,
\\boxed{5}, \\boxed{6}, \\boxed{7} and no answer, so n = 4 and each problem's correct count is
known by hand:
  math500 copy, answers 5, 6, 1/2  -> c = 1, 1, 0
  gsm8k copy, answers #### 7, #### 1,234 -> c = 1, 0
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
import yaml
from datasets import load_from_disk

from nsa.cli import main
from nsa.contracts import Benchmark
from nsa.errors import NSAError
from nsa.evaluate import benchmark_metrics, pass_at_k
from nsa.plugins.benchmarks.aime24 import AIME24
from nsa.plugins.benchmarks.aime25 import AIME25
from nsa.plugins.benchmarks.amc23 import AMC23
from nsa.plugins.benchmarks.gsm8k import GSM8K
from nsa.plugins.benchmarks.math500 import MATH500
from nsa.plugins.benchmarks.problem_file import ProblemFile
from tests.recipe import tiny_recipe

COPIES = Path(__file__).parents[1] / "data" / "benchmarks"


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),  # pass@1 = c / n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (4, 0, 4, 0.0),  # nothing right
        (4, 3, 2, 1.0),  # n - c = 1 < k: every 2-subset holds a right answer
        (40, 1, 1, 0.025),
    ],
)
def test_pass_at_k_golden(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_formula_for_large_n():
    """The product form equals 1 - C(n-c, k) / C(n, k) computed with exact integers."""
    for n, c, k in [(64, 5, 8), (100, 1, 50), (32, 16, 16)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


def test_benchmark_metrics_golden():
    """c = 1, 1, 0 of n = 4: avg@4 = (1/4 + 1/4 + 0) / 3 = 16.67%; pass@2 = (1/2 + 1/2 + 0) / 3
    = 33.33%; pass@4 = (1 + 1 + 0) / 3 = 66.67%. Standard error: the shares 1/4, 1/4, 0 lie
    1/12, 1/12, -1/6 from their mean, sample variance (1/144 + 1/144 + 4/144) / 2 = 1/48, so
    se = sqrt(1/48) / sqrt(3) = 1/12 = 8.33%. One problem has no spread: se 0."""
    metrics = benchmark_metrics([1, 1, 0], 4, [1, 2, 4])
    golden = {"avg@4": 100 / 6, "avg@4_se": 100 / 12, "pass@1": 100 / 6, "pass@2": 100 / 3, "pass@4": 200 / 3}
    assert metrics == pytest.approx(golden)
    assert benchmark_metrics([3], 4, [1])["avg@4_se"] == 0.0


@pytest.mark.parametrize(
    ("plugin", "ids", "answers"),
    [
        (
            MATH500,
            ["test/prealgebra/1.json", "test/prealgebra/2.json", "test/prealgebra/3.json"],
            ["5", "6", "\\frac{1}{2}"],
        ),
        (AIME24, ["60", "61"], ["24", "9"]),
        (AIME25, ["0", "1"], ["15", "1"]),
        (AMC23, ["0", "1"], ["1.0", "11.0"]),
        (GSM8K, ["q000000", "q000001"], ["7", "1234"]),  # the number after ####, commas dropped
    ],
)
def test_each_benchmark_loads_its_local_copy(plugin, ids, answers):
    bench = plugin(source=str(COPIES / f"{plugin.__name__.lower()}.jsonl"))
    assert isinstance(bench, Benchmark)
    rows = bench.load()
    assert rows.column_names == ["id", "question", "answer"]
    assert rows["id"] == ids and rows["answer"] == answers
    assert all(q.strip() for q in rows["question"])
    assert "{question}" in bench.prompt_template
    assert type(bench.verifier()).__name__ == "MathVerifier"


def test_problem_file_selects_a_held_out_range(tmp_path):
    """Rows skip .. skip + limit of a file in the recipe's own format: 120 rows, skip 96 keeps
    the last 24 (easy-0096 .. easy-0119); limit 5 keeps 96 .. 100; a skip past the end is an error."""
    source = str(Path(__file__).parents[2] / "data" / "easy_word_problems.jsonl")
    held_out = ProblemFile(source=source, skip=96).load()
    assert len(held_out) == 24 and held_out["id"][0] == "easy-0096" and held_out["id"][-1] == "easy-0119"
    assert ProblemFile(source=source, skip=96, limit=5).load()["id"] == [f"easy-{i:04d}" for i in range(96, 101)]
    with pytest.raises(NSAError, match=r"ProblemFile problems: skip 500 leaves none of the 120 rows of .*easy_word"):
        ProblemFile(source=source, skip=500).load()
    with pytest.raises(NSAError, match=r"no field 'prompt'.*ProblemFile reads fields question_field=prompt"):
        ProblemFile(source=source, question_field="prompt").load()


def test_a_gsm8k_answer_without_its_final_number_is_named(tmp_path):
    broken = tmp_path / "gsm8k.jsonl"
    broken.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "It is 5."}) + "\n")
    with pytest.raises(NSAError, match=r"gsm8k\.jsonl: answer of row 0 has no '#### <number>'"):
        GSM8K(source=str(broken)).load()


def test_a_missing_field_names_the_field_and_the_file(tmp_path):
    broken = tmp_path / "math500.jsonl"
    broken.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5", "unique_id": "a"}) + "\n")
    with pytest.raises(
        NSAError, match=r"math500\.jsonl: no field 'problem'.*MATH500 reads fields question_field=problem"
    ):
        MATH500(source=str(broken)).load()


def evaluate_recipe(tmp_path: Path, model: str, **evaluate) -> Path:
    recipe = yaml.safe_load(tiny_recipe(tmp_path, model).read_text())
    recipe["evaluate"] = {
        "benchmarks": [
            {"class_path": "MATH500", "init_args": {"source": str(COPIES / "math500.jsonl"), "workers": 1}},
            {"class_path": "GSM8K", "init_args": {"source": str(COPIES / "gsm8k.jsonl"), "workers": 1}},
        ],
        "pass_k": [1, 2, 4],
        **evaluate,
    }
    path = tmp_path / "evaluate.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_evaluate_prints_and_logs_the_hand_counted_table(tmp_path, tiny_model, capsys, monkeypatch):
    """math500: avg@4 16.67, pass@2 33.33, pass@4 66.67 (see test_benchmark_metrics_golden).
    gsm8k: c = 1, 0: avg@4 = 1/4 / 2 = 12.50, pass@2 = 1/2 / 2 = 25.00, pass@4 = 1 / 2 = 50.00;
    shares 1/4, 0: variance (1/8)^2 * 2 / 1 = 1/32, se = sqrt(1/32) / sqrt(2) = 1/8 = 12.50.
    The scripted answers all end in EOS: nothing truncated."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")  # a sample per 50 ms of evaluation
    main(["evaluate", "--config", str(evaluate_recipe(tmp_path, tiny_model))])
    table = capsys.readouterr().out.splitlines()
    header = ["benchmark", "problems", "dropped", "avg@4", "avg@4_se", "pass@1", "pass@2", "pass@4", "truncated%"]
    assert table[0].split() == header
    assert table[1].split() == ["math500", "3", "0", "16.67", "8.33", "16.67", "33.33", "66.67", "0.00"]
    assert table[2].split() == ["gsm8k", "2", "0", "12.50", "12.50", "12.50", "25.00", "50.00", "0.00"]
    assert table[3].split() == ["mean", "14.58", "10.42", "14.58", "29.17", "58.33", "0.00"]

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert run.data.metrics["eval/math500/pass_at_4"] == pytest.approx(200 / 3)
    assert run.data.metrics["eval/gsm8k/avg_at_4"] == pytest.approx(12.5)
    assert run.data.metrics["eval/math500/avg_at_4_se"] == pytest.approx(100 / 12)
    assert run.data.metrics["eval/gsm8k/truncated_pct"] == 0.0
    assert run.data.params["eval/policy"] == tiny_model  # no trained export yet: the start model
    assert run.data.tags["nsa.command"] == "evaluate"
    assert run.info.status == "FINISHED"
    assert "system/cpu_utilization_percentage" in run.data.metrics  # system metrics, on by default
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert artifacts == {"eval/results.json", "eval/results.txt"}
    table_json = json.loads(
        Path(client.download_artifacts(run.info.run_id, "eval/results.json", str(tmp_path))).read_text()
    )
    assert table_json["columns"][:4] == ["benchmark", "problems", "dropped", "avg@4"]


def test_a_second_evaluation_samples_nothing(tmp_path, tiny_model, capsys):
    """Sampling and verifying are cached stages: the second run reuses both folders."""
    recipe = evaluate_recipe(tmp_path, tiny_model)
    main(["evaluate", "--config", str(recipe)])
    first = capsys.readouterr().out
    cache = tmp_path / "cache"
    folders = {stage: sorted(p.name for p in (cache / stage).iterdir()) for stage in ("eval_sample", "eval_verify")}
    assert [len(f) for f in folders.values()] == [2, 2]  # one per benchmark
    # references (code tests can be megabytes) are not copied into each of the n sampled rows
    shard = load_from_disk(str(next((cache / "eval_sample").glob("*/shard-00000"))))
    assert set(shard["answer"]) == {""} and len(shard) > 0
    marker = cache / "eval_sample" / folders["eval_sample"][0] / "stats.json"
    before = marker.stat().st_mtime_ns
    main(["evaluate", "--config", str(recipe)])
    assert capsys.readouterr().out == first
    assert marker.stat().st_mtime_ns == before
    assert {s: sorted(p.name for p in (cache / s).iterdir()) for s in folders} == folders


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [
        ({"pass_k": [8]}, r"evaluate.pass_k \[8\] must lie in 1..4"),
        ({"benchmarks": []}, r"evaluate.benchmarks is empty"),
        ({"benchmarks": [{"class_path": "MATH500"}, {"class_path": "MATH500"}]}, r"two benchmarks share a name"),
        ({"benchmarks": [{"class_path": "MATH501"}]}, r"'MATH501' for --evaluate.benchmarks: did you mean 'MATH500'"),
        (
            {"benchmarks": [{"class_path": "MATH500", "init_args": {"prompt_template": "Q: {problem}"}}]},
            r"evaluate.benchmarks\[0\] \(math500\) prompt_template has \{problem\}: its only field is \{question\}",
        ),
    ],
)
def test_bad_settings_fail_in_one_line_before_sampling(tmp_path, tiny_model, capsys, evaluate, message):
    with pytest.raises(SystemExit):
        main(["evaluate", "--config", str(evaluate_recipe(tmp_path, tiny_model, **evaluate))])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("nsa: error:")
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "cache" / "eval_sample").exists()


@pytest.mark.parametrize("flag", ["--evaluate.benchmarks=[MATH500,GSM8K]", "--evaluate.benchmarks+=GSM8K"])
def test_short_benchmark_names_on_the_command_line(tmp_path, tiny_model, capsys, flag):
    """``list[Benchmark] | None`` is a plugin slot too: short names resolve, alone or in a list."""
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--config", str(evaluate_recipe(tmp_path, tiny_model)), flag, "--print_config"])
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    paths = [b["class_path"] for b in printed["evaluate"]["benchmarks"]]
    assert paths[-1] == "nsa.plugins.benchmarks.gsm8k.GSM8K"
    assert "nsa.plugins.benchmarks.math500.MATH500" in paths


def test_evaluate_runs_on_the_recipes_placement(tmp_path, tiny_model, capsys):
    """Evaluation runs on the recipe's processes (tests/core/test_scale_out.py runs two): a
    recipe for 8 GPUs x 8 nodes on a machine without them is a one-line error saying what to
    override, and the overrides evaluate it here."""
    recipe = yaml.safe_load(evaluate_recipe(tmp_path, tiny_model).read_text())
    recipe["trainer"].update(accelerator="gpu", devices=8, num_nodes=8, strategy="fsdp")
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit):
        main(["evaluate", "--config", str(path)])
    assert "nsa: error: trainer: No supported gpu backend found!" in capsys.readouterr().err
    here = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto"]
    main(["evaluate", "--config", str(path), *here])
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["math500", "3", "0", "16.67"]
