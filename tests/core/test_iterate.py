"""``nsa iterate``: rounds of sample -> verify -> judge -> train -> evaluate, each an MLflow child
run of one parent, each starting from the policy the previous round trained; a rerun resumes.

The tiny recipe (tests/recipe.py) with scripted answers: every round has the same 12 answers,
but its sample stage is keyed by the policy's files, so each round samples (and caches) anew.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml

from nsa.cli import main
from tests.recipe import tiny_recipe

COPIES = Path(__file__).parents[1] / "data" / "benchmarks"


@pytest.fixture
def recipe(tmp_path, tiny_model) -> Path:
    config = yaml.safe_load(tiny_recipe(tmp_path, tiny_model).read_text())
    config["trainer"]["max_steps"] = 1
    config["evaluate"] = {
        "benchmarks": [{"class_path": "MATH500", "init_args": {"source": str(COPIES / "math500.jsonl"), "workers": 1}}]
    }
    path = tmp_path / "iterate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def runs(tmp_path: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.search_runs(experiment_names=["tests"], output_format="list")


def test_each_iteration_trains_the_last_policy_and_a_rerun_resumes(tmp_path, tiny_model, recipe, capsys):
    main(["iterate", "--config", str(recipe), "--iterations", "2"])
    (parent,) = [r for r in runs(tmp_path) if r.data.tags.get("nsa.command") == "iterate"]
    children = sorted(
        (r for r in runs(tmp_path) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: r.data.tags["nsa.iteration"],
    )
    assert [c.data.tags["nsa.iteration"] for c in children] == ["1", "2"]
    assert [c.data.params["policy"] for c in children] == [tiny_model, str(tmp_path / "policy" / "iter1")]
    assert [c.data.params["eval/policy"] for c in children] == [str(tmp_path / "policy" / f"iter{k}") for k in (1, 2)]
    assert all("train/loss" in c.data.metrics and "eval/math500/avg_at_4" in c.data.metrics for c in children)
    assert all((tmp_path / "policy" / f"iter{k}" / "config.json").exists() for k in (1, 2))
    assert len(list((tmp_path / "cache" / "sample").iterdir())) == 2  # one sampling per policy

    # a third iteration later: the first two are not run again
    capsys.readouterr()
    main(["iterate", "--config", str(recipe), "--iterations", "3"])
    assert "iteration 1 done before" in capsys.readouterr().err
    everything = runs(tmp_path)
    assert sum(r.data.tags.get("nsa.command") == "iterate" for r in everything) == 1
    iterations = [r.data.tags["nsa.iteration"] for r in everything if "nsa.iteration" in r.data.tags]
    assert sorted(iterations) == ["1", "2", "3"]
    assert len(list((tmp_path / "cache" / "sample").iterdir())) == 3


def test_bad_iteration_settings_are_one_line(tmp_path, recipe, capsys):
    for extra, message in [([], "needs --iterations N"), (["--iterations", "0"], "give at least 1")]:
        with pytest.raises(SystemExit):
            main(["iterate", "--config", str(recipe), *extra])
        assert message in capsys.readouterr().err


def test_an_iteration_cut_off_is_repeated_in_its_own_run(tmp_path, recipe):
    """A stop inside iteration 2 leaves its child run without the done tag (made here by hand,
    as a kill would leave it): the rerun trains iteration 2 again, into that same run."""
    main(["iterate", "--config", str(recipe), "--iterations", "1"])
    (parent,) = [r for r in runs(tmp_path) if r.data.tags.get("nsa.command") == "iterate"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    tags = {"mlflow.parentRunId": parent.info.run_id, "nsa.iteration": "2"}
    cut_off = client.create_run(parent.info.experiment_id, tags=tags).info.run_id
    main(["iterate", "--config", str(recipe), "--iterations", "2"])
    second = [r for r in runs(tmp_path) if r.data.tags.get("nsa.iteration") == "2"]
    assert [r.info.run_id for r in second] == [cut_off]
    assert second[0].data.tags["nsa.done"] == "true" and "train/loss" in second[0].data.metrics


def test_help_needs_no_iteration_count(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["iterate", "--help"])
    assert stop.value.code == 0 and "usage: nsa iterate" in capsys.readouterr().out
