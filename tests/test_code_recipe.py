"""recipes/code.yaml: the math recipe's setup with CodeVerifier and LiveCodeBench; the data stages on code.

The pipeline test runs the data stages end to end (as ``nsa prepare`` does) on the tiny model with
scripted answers, the same four for each of three problems:
  a0 a program printing a + b       right for "sum"
  a1 a program printing a * b       right for "product"
  a2 a program that forks           refused by the sandbox (blocked)
  a3 no code block                  (no_code)
By hand: 12 answers, 2 correct (ok), 4 wrong answers, 3 blocked, 3 without code. "difference" has no
right answer: dropped. 2 questions kept, 8 answers, 6 negatives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nsa.cli import main
from nsa.commands import NSACLI
from nsa.plugins.verifiers.code import parse_reference, reference_json
from tests.recipe import tiny_recipe

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).parents[1]


def resolved(capsys, recipe: Path) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None), out
    return yaml.safe_load(out)


def test_code_recipe_is_the_math_setup_with_code_verification(capsys):
    code, math = resolved(capsys, REPO / "recipes" / "code.yaml"), resolved(capsys, REPO / "recipes" / "math.yaml")
    runs = ("export_dir",)
    assert {k: v for k, v in code["model"].items() if k not in runs} == {
        k: v for k, v in math["model"].items() if k not in runs
    }
    assert code["model"]["export_dir"] != math["model"]["export_dir"]
    same_trainer = ("accelerator", "devices", "num_nodes", "strategy", "precision", "max_epochs")
    assert {k: code["trainer"][k] for k in same_trainer} == {k: math["trainer"][k] for k in same_trainer}
    assert code["trainer"]["callbacks"][0]["init_args"]["dirpath"] == "runs/code/ckpt"
    for key in ("sampler", "segmenter", "judges", "consensus", "responses_per_step", "tokens_per_micro_batch"):
        assert code["data"][key] == math["data"][key], key
    verifier = code["data"]["verifier"]
    assert verifier["class_path"] == "nsa.plugins.verifiers.code.CodeVerifier"
    expected = {"timeout_s": 6.0, "memory_mb": 1024, "output_mb": 16, "disk_mb": 64, "packages": [], "workers": 8}
    assert verifier["init_args"] == expected
    template = code["data"]["prompt_template"]
    assert template.startswith("{question}") and "```python" in template and "standard input" in template
    assert code["data"]["problems"] == "data/code_problems.jsonl"
    benchmarks = [b["class_path"] for b in code["evaluate"]["benchmarks"]]
    assert benchmarks == ["nsa.plugins.benchmarks.livecodebench.LiveCodeBench"]
    assert code["evaluate"]["sampler"] == math["evaluate"]["sampler"]


def test_the_code_problems_are_valid_references():
    rows = [json.loads(line) for line in (REPO / "data" / "code_problems.jsonl").read_text().splitlines()]
    assert 20 <= len(rows) <= 30 and len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        tests = parse_reference(row["answer"])
        assert len(tests.cases) >= 3 and tests.fn_name is None, row["id"]
        assert "Input" in row["question"] and "Output" in row["question"], row["id"]


def program(code: str) -> str:
    return f"Here is my program.\n\n```python\n{code}\n```"


ANSWERS = [
    program("a, b = map(int, input().split())\nprint(a + b)"),
    program("a, b = map(int, input().split())\nprint(a * b)"),
    program("import os\nos.fork()\nprint(0)"),
    "I do not know.",
]


def code_problems(folder: Path) -> Path:
    """Three short problems: the tiny model's context is 512 tokens."""
    cases = {"sum": [("1 2\n", "3\n"), ("2 5\n", "7\n")], "product": [("2 3\n", "6\n"), ("4 5\n", "20\n")]}
    cases["difference"] = [("5 3\n", "2\n"), ("9 1\n", "8\n")]
    path = folder / "code.jsonl"
    rows = [
        {"id": name, "question": f"Print the {name} of a and b.", "answer": reference_json(c)}
        for name, c in cases.items()
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_data_stages_build_training_rows_from_verified_programs(tmp_path, tiny_model):
    recipe = tiny_recipe(
        tmp_path,
        tiny_model,
        problems=str(code_problems(tmp_path)),
        prompt_template="{question} Answer with a ```python block.",
        sampler={"class_path": "tests.scripted.ScriptedSampler", "init_args": {"answers": ANSWERS}},
        verifier={"class_path": "nsa.plugins.verifiers.code.CodeVerifier", "init_args": {"timeout_s": 2.0}},
        tokens_per_micro_batch=1024,
    )
    datamodule = NSACLI(["--config", str(recipe)], run=False).datamodule
    datamodule.run_stages()
    stats = datamodule.stats
    assert stats["answers"] == 12 and stats["answers_correct"] == 2 and stats["answers_ok"] == 2
    assert stats["answers_wrong_answer"] == 4 and stats["answers_blocked"] == 3 and stats["answers_no_code"] == 3
    assert stats["questions_kept"] == 2 and stats["questions_all_wrong"] == 1
    assert stats["answers_kept"] == 8 and stats["negatives"] == 6
    rows = datamodule.stages[-1].dataset
    assert sorted(set(rows["group"])) == ["product", "sum"] and len(rows) == 8
    for row in rows:
        assert len(row["nsa_mask"]) == len(row["ref_logprobs"]) == len(row["response_ids"])
        right = "a + b" if row["group"] == "sum" else "a * b"
        assert row["reward"] == float(right in row["response"])
