"""``nsa sweep`` on the tiny recipe: cells share the cached stages, a failed sweep resumes, MLflow.

Answers are scripted (tests/scripted.py): one sampling of the three problems is three calls of
``ScriptedSampler.sample`` (``data.shard_size`` 1), so a call count says how often a cell sampled.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import mlflow
import pytest
import yaml

from nsa.cli import main
from tests.recipe import migrated_store, tiny_recipe
from tests.scripted import ScriptedSampler

MATH500 = Path(__file__).parents[1] / "data" / "benchmarks" / "math500.jsonl"


@pytest.fixture
def sample_calls(monkeypatch) -> list[int]:
    """One entry per ScriptedSampler.sample call (every cell's sampler is a new instance)."""
    calls: list[int] = []
    original = ScriptedSampler.sample

    @functools.wraps(original)  # the same signature: the Sampler contract is checked on annotations
    def counted(self, model_dir, prompt_ids):
        calls.append(len(prompt_ids))
        return original(self, model_dir, prompt_ids)

    monkeypatch.setattr(ScriptedSampler, "sample", counted)
    return calls


def write_sweep(tmp_path: Path, model: str, **spec) -> Path:
    """A sweep over the tiny recipe: one optimizer step a cell, each exporting to its own folder."""
    base = tiny_recipe(tmp_path, model)
    sweep = {
        "base": base.name,  # relative to the sweep file, which lies beside it
        "per_cell": {"model.export_dir": str(tmp_path / "runs" / "{cell}"), "trainer.max_steps": 1},
        **spec,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def untouched(tmp_path: Path) -> bool:
    """No run was logged: the store is still the migrated empty copy tiny_recipe put there."""
    return (tmp_path / "mlflow.db").read_bytes() == migrated_store().read_bytes()


def runs(tmp_path: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.search_runs(experiment_names=["tests"], output_format="list")


def stage_dirs(tmp_path: Path, stage: str) -> int:
    return len(list((tmp_path / "cache" / stage).iterdir()))


THREE_CELLS = [
    {"name": "bcpg", "model.loss.init_args.beta": 1.0},
    {"name": "rft", "model.loss": "RFT"},  # a short plugin name, resolved as on the command line
    {"name": "any", "data.consensus.init_args.rule": "any"},
]


def test_cells_share_every_data_stage_and_log_child_runs(tmp_path, tiny_model, sample_calls, capsys):
    """Two losses and a consensus rule: one sampling, one judging; only the labels run twice."""
    main(["sweep", "--config", str(write_sweep(tmp_path, tiny_model, cells=THREE_CELLS))])
    assert sample_calls == [1, 1, 1]  # three problems, sampled once for all three cells
    shared = ("sample", "verify", "groups", "behaviour", "segment", "judge")
    assert [stage_dirs(tmp_path, s) for s in shared] == [1] * 6
    assert stage_dirs(tmp_path, "label") == 2  # rule all (two cells) and rule any
    assert all((tmp_path / "runs" / c["name"] / "config.json").exists() for c in THREE_CELLS)

    (parent,) = [r for r in runs(tmp_path) if r.data.tags.get("nsa.command") == "sweep"]
    children = [r for r in runs(tmp_path) if r.info.run_id != parent.info.run_id]
    assert sorted(r.data.tags["nsa.cell"] for r in children) == ["any", "bcpg", "rft"]  # no stray runs
    for child in children:  # Lightning's logger wrote into the child run the sweep made
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        assert "train/loss" in child.data.metrics and "stage/label" in child.data.params
    assert parent.info.status == "FINISHED"

    table = capsys.readouterr().out.splitlines()[-4:]
    assert table[0].split() == ["cell", "train/loss"] and [line.split()[0] for line in table[1:]] == [
        "bcpg",
        "rft",
        "any",
    ]
    client = mlflow.MlflowClient()
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"sweep.yaml", "sweep"}
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert logged == {"sweep/summary.json", "sweep/summary.png", "sweep/summary.txt"}
    summary = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "sweep/summary.json", str(tmp_path))).read_text()
    )
    assert summary["columns"] == ["cell", "train/loss"] and len(summary["data"]) == 3
    png = Path(client.download_artifacts(parent.info.run_id, "sweep/summary.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_cell_is_named_and_the_rerun_skips_finished_cells(tmp_path, tiny_model, sample_calls, capsys):
    """Cell `short` fails while training (max_length 1 drops every row); after the fix, a rerun
    resumes the same parent run, skips `ok` (still one run) and finishes `short`."""
    cells = [{"name": "ok"}, {"name": "short", "data.max_length": 1}]
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--config", str(write_sweep(tmp_path, tiny_model, cells=cells))])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"nsa: error: sweep cell short failed: no training rows left .*rerun the sweep to resume", err)
    statuses = {r.data.tags.get("nsa.cell", "parent"): r.info.status for r in runs(tmp_path)}
    assert statuses == {"parent": "FAILED", "ok": "FINISHED", "short": "FAILED"}

    cells[1]["data.max_length"] = 512
    main(["sweep", "--config", str(write_sweep(tmp_path, tiny_model, cells=cells))])
    assert "cell ok already finished, skipped" in capsys.readouterr().err
    by_cell = sorted((r.data.tags.get("nsa.cell", "parent"), r.info.status) for r in runs(tmp_path))
    assert by_cell == [("ok", "FINISHED"), ("parent", "FINISHED"), ("short", "FAILED"), ("short", "FINISHED")]
    assert sample_calls == [1, 1, 1]  # the rerun sampled nothing


def test_a_grid_with_evaluation_puts_eval_metrics_in_the_summary(tmp_path, tiny_model, capsys):
    """Two beta cells named from the grid; `evaluate: true` benchmarks each trained policy in its
    own child run, and the eval/* metrics join train/loss in the table."""
    recipe = yaml.safe_load(tiny_recipe(tmp_path, tiny_model).read_text())
    recipe["evaluate"] = {
        "benchmarks": [{"class_path": "MATH500", "init_args": {"source": str(MATH500), "workers": 1}}]
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    sweep = {"base": "recipe.yaml", "grid": {"model.loss.init_args.beta": [1.0, 0.5]}, "evaluate": True}
    sweep["per_cell"] = {"model.export_dir": str(tmp_path / "runs" / "{cell}"), "trainer.max_steps": 1}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    main(["sweep", "--config", str(tmp_path / "sweep.yaml")])
    table = capsys.readouterr().out.splitlines()[-3:]
    assert table[0].split()[:3] == ["cell", "train/loss", "eval/math500/avg_at_4"]
    assert [line.split()[0] for line in table[1:]] == ["beta=1.0", "beta=0.5"]
    children = [r for r in runs(tmp_path) if "nsa.cell" in r.data.tags]
    for child in children:  # the cell's trained policy, not the start model
        assert child.data.params["eval/policy"] == str(tmp_path / "runs" / child.data.tags["nsa.cell"])
        assert child.info.status == "FINISHED" and child.data.tags["nsa.command"] == "fit,evaluate"
    assert len(runs(tmp_path)) == 3


def test_name_flag_names_the_sweep_and_fills_the_sweep_placeholder(tmp_path, tiny_model, capsys):
    """One sweep file, two sweeps (a seed each): ``--name`` replaces the file's name, and
    ``{sweep}`` in per_cell gives each its own folders; a dry run lists them and trains nothing."""
    path = write_sweep(tmp_path, tiny_model, cells=THREE_CELLS[:2], name="from-file")
    spec = yaml.safe_load(path.read_text())
    spec["per_cell"]["model.export_dir"] = str(tmp_path / "runs" / "{sweep}" / "{cell}")
    path.write_text(yaml.safe_dump(spec))
    main(["sweep", "--config", str(path), "--name", "seed 1", "--seed_everything=1", "--dry_run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["bcpg", "rft"]
    for line, cell in zip(lines, ["bcpg", "rft"]):
        assert f"--model.export_dir={tmp_path}/runs/seed_1/{cell}" in line and "--seed_everything=1" in line
    assert untouched(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--config", str(path), "--name", "it's"])
    assert stop.value.code == 2 and "may not contain a quote; set `name:` or --name" in capsys.readouterr().err


def test_cells_flag_runs_only_the_cells_named(tmp_path, tiny_model, capsys):
    """``--cells`` picks cells by name, in the file's order, with the same arguments (so the same
    fingerprints: a later run of the whole sweep skips them); a misspelt name is a one-line
    error naming the close one and the file's cells."""
    path = write_sweep(tmp_path, tiny_model, cells=THREE_CELLS)
    main(["sweep", "--config", str(path), "--dry_run"])
    every = capsys.readouterr().out.strip().splitlines()
    main(["sweep", "--config", str(path), "--dry_run", "--cells", "rft", "bcpg"])
    picked = capsys.readouterr().out.strip().splitlines()
    assert len(every) == 3 and picked == [line for line in every if line.split(":")[0] in ("bcpg", "rft")]
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--config", str(path), "--dry_run", "--cells", "rtf"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--cells names no cell 'rtf'; did you mean rft? its cells: bcpg, rft, any" in err


def test_a_sweep_run_cell_by_cell_is_the_whole_sweep(tmp_path, tiny_model, capsys):
    """``--cells rft`` trains rft alone; its summary has that row, and a notice names the cell
    left. The whole sweep then skips rft (same arguments, so the same fingerprint) and trains
    only bcpg, and its summary has both rows. ``--cells`` given twice adds up."""
    path = write_sweep(tmp_path, tiny_model, cells=THREE_CELLS[:2])
    main(["sweep", "--config", str(path), "--cells", "rft"])
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.strip().splitlines()[-1:]] == ["rft"]
    assert "cells bcpg have not run; run without --cells for them" in err
    assert not (tmp_path / "runs" / "bcpg").exists() and (tmp_path / "runs" / "rft" / "config.json").exists()
    main(["sweep", "--config", str(path), "--cells", "bcpg", "--cells", "rft"])
    out, err = capsys.readouterr()
    assert "cell rft already finished, skipped" in err and "cell bcpg (MLflow run" in err
    assert [line.split()[0] for line in out.strip().splitlines()[-2:]] == ["bcpg", "rft"] and "have not run" not in err
    children = [r for r in runs(tmp_path) if r.data.tags.get("nsa.command") != "sweep"]
    assert sorted(r.data.tags["nsa.cell"] for r in children) == ["bcpg", "rft"]  # rft trained once


def test_a_cell_resolves_to_the_config_fit_prints(tmp_path, tiny_model, capsys):
    """The config a sweep checks a cell by is read from the parser, not printed and read back: the
    mapping `nsa fit --print_config` prints, less fit's own arguments (ckpt_path, weights_only)."""
    from nsa import sweep

    cell = sweep.load(str(write_sweep(tmp_path, tiny_model, cells=THREE_CELLS)), []).cells[0]
    with pytest.raises(SystemExit):
        main(["fit", *cell.args, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert sweep.resolve(cell) == {k: v for k, v in printed.items() if k not in ("ckpt_path", "weights_only")}
    assert not (tmp_path / "cache").exists() and untouched(tmp_path)  # nothing built


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"cells": [{"name": "a"}]}, r"sweep .*sweep\.yaml: no base recipe; set `base:`"),
        ({"base": "recipe.yaml", "cells": [{}], "grids": {}}, r"unknown key 'grids'; the keys are base, cells"),
        ({"base": "recipe.yaml", "cells": [{}], "grid": {"seed_everything": [1]}}, r"either `grid` or `cells`"),
        ({"base": "nowhere.yaml", "cells": [{"name": "a"}]}, r"sweep cell a: recipe file not found: .*nowhere"),
        ({"base": "recipe.yaml", "cells": [{"name": "a"}, {"name": "a", "seed_everything": 1}]}, r"share a name"),
        ({"base": "recipe.yaml", "cells": [{"name": "a"}], "name": "it's"}, r"name \"it's\" may not contain a quote"),
        # a misspelled override fails before any cell trains, naming its cell
        (
            {"base": "recipe.yaml", "cells": [{"name": "ok"}, {"name": "typo", "model.los.init_args.beta": 1}]},
            r"sweep cell typo: .*model\.los",
        ),  # fmt: skip
        (
            {"base": "recipe.yaml", "cells": [{"name": "a"}, {"name": "b", "seed_everything": 1}]},
            r"sweep cells a and b share model\.export_dir .*policy; set it per cell",
        ),  # fmt: skip
    ],
)
def test_bad_sweep_files_fail_in_one_line_before_training(tmp_path, tiny_model, capsys, spec, message):
    tiny_recipe(tmp_path, tiny_model)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--config", str(tmp_path / "sweep.yaml")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("nsa: error:") and re.search(message, err), err
    assert not (tmp_path / "cache").exists() and untouched(tmp_path)


@pytest.mark.multiprocess
def test_a_killed_sweep_resumes_skipping_finished_cells(tmp_path, tiny_model):
    """SIGKILL the sweep while cell `slow` samples (cell `ok` done): the rerun keeps the parent,
    skips `ok`, marks the stale `slow` run KILLED and runs `slow` to the end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def cells(delay: float) -> list[dict]:
        slow = {"class_path": "tests.scripted.SlowScriptedSampler", "init_args": {"delay_s": delay}}
        return [{"name": "ok"}, {"name": "slow", "data.sampler": slow}]

    sweep = write_sweep(tmp_path, tiny_model, cells=cells(120.0))
    code = f"from nsa.cli import main; main(['sweep', '--config', {str(sweep)!r}])"
    repo = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": repo}  # tests.scripted, for the recipe's sampler
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=repo, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    seen = []
    for line in process.stderr:  # wait until the slow cell has started
        seen.append(line)
        if "cell slow (MLflow run" in line:
            break
    assert "cell slow (MLflow run" in seen[-1], "".join(seen[-20:])
    time.sleep(3)  # inside its sampling now
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    statuses = {r.data.tags.get("nsa.cell", "parent"): r.info.status for r in runs(tmp_path)}
    assert statuses == {"parent": "RUNNING", "ok": "FINISHED", "slow": "RUNNING"}  # as the kill left them

    main(["sweep", "--config", str(write_sweep(tmp_path, tiny_model, cells=cells(0.0)))])
    by_cell = sorted((r.data.tags.get("nsa.cell", "parent"), r.info.status) for r in runs(tmp_path))
    assert by_cell == [("ok", "FINISHED"), ("parent", "FINISHED"), ("slow", "FINISHED"), ("slow", "KILLED")]
