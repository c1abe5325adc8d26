"""Tracking on a real MLflow server (``mlflow server`` on 127.0.0.1, sqlite store, served
artifacts): a fit and an evaluation log their runs there, and an unreachable server stops
the command in one line before any data stage runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from nsa.cli import main
from tests.recipe import tiny_recipe

COPIES = Path(__file__).parents[1] / "data" / "benchmarks"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder}/m.db", "--artifacts-destination", str(folder / "art")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).read()
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow server did not start in 90 s")
    yield uri
    process.terminate()
    process.wait(timeout=30)


def remote_recipe(tmp_path: Path, model: str, uri: str, experiment: str = "remote") -> Path:
    recipe = yaml.safe_load(tiny_recipe(tmp_path, model).read_text())
    recipe["trainer"]["logger"]["init_args"].update(tracking_uri=uri, experiment_name=experiment)
    recipe["evaluate"] = {
        "benchmarks": [{"class_path": "MATH500", "init_args": {"source": str(COPIES / "math500.jsonl"), "workers": 1}}],
        "pass_k": [1, 4],
    }
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.server
@pytest.mark.multiprocess
def test_fit_and_evaluate_log_to_the_server(server, tmp_path, tiny_model, capsys):
    recipe = remote_recipe(tmp_path, tiny_model, server)
    main(["fit", "--config", str(recipe)])
    main(["evaluate", "--config", str(recipe)])
    capsys.readouterr()
    client = mlflow.MlflowClient(server)
    runs = {r.data.tags.get("nsa.command", "fit"): r for r in client.search_runs([_experiment(client)])}
    fit, evaluation = runs["fit"], runs["evaluate"]
    assert "train/loss" in fit.data.metrics and fit.data.metrics["data/answers"] == 12
    assert {a.path for a in client.list_artifacts(fit.info.run_id)} >= {"config.yaml"}
    assert evaluation.data.params["eval/policy"] == str(tmp_path / "policy")  # the trained export
    table = json.loads(
        Path(client.download_artifacts(evaluation.info.run_id, "eval/results.json", str(tmp_path))).read_text()
    )
    assert table["data"][0][:2] == ["math500", 3]


@pytest.mark.server
@pytest.mark.multiprocess
def test_a_tiny_sweep_tracks_its_cells_on_the_server(server, tmp_path, tiny_model, capsys):
    """Two cells (beta 1 and 0.5): a parent run with the summary, two FINISHED child runs."""
    sweep = tmp_path / "sweep.yaml"
    grid = {"model.loss.init_args.beta": [1.0, 0.5]}
    per_cell = {"model.export_dir": str(tmp_path / "{cell}" / "policy")}
    sweep.write_text(
        yaml.safe_dump(
            {
                "base": str(remote_recipe(tmp_path, tiny_model, server, "remote-sweep")),
                "grid": grid,
                "per_cell": per_cell,
            }
        )
    )
    main(["sweep", "--config", str(sweep)])
    capsys.readouterr()
    client = mlflow.MlflowClient(server)
    everything = client.search_runs([client.get_experiment_by_name("remote-sweep").experiment_id])
    (parent,) = [r for r in everything if r.data.tags.get("nsa.command") == "sweep"]
    children = [r for r in everything if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.tags["nsa.cell"] for c in children) == ["beta=0.5", "beta=1.0"]
    assert all(c.info.status == "FINISHED" and "train/loss" in c.data.metrics for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/summary.json", "sweep/summary.png"} <= artifacts


@pytest.mark.multiprocess
def test_an_unreachable_server_stops_before_any_stage(tmp_path, tiny_model, capsys):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": str(remote_recipe(tmp_path, tiny_model, dead)), "cells": [{"name": "a"}]}))
    commands = [[c, "--config", str(remote_recipe(tmp_path, tiny_model, dead))] for c in ("fit", "prepare", "evaluate")]
    commands += [
        ["sweep", "--config", str(sweep)],
        ["iterate", "--config", str(tmp_path / "remote.yaml"), "--iterations", "1"],
    ]
    for command in commands:
        with pytest.raises(SystemExit):
            main(command)
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(f"nsa: error: MLflow server {dead} is unreachable"), lines[-1]
        assert "sqlite:///mlflow.db" in lines[-1]
    assert not (tmp_path / "cache").exists()  # no stage ran


def _experiment(client) -> str:
    return client.get_experiment_by_name("remote").experiment_id
