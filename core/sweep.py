"""``nsa sweep``: run the cells of an ablation (one recipe, several overrides) and compare them.

A sweep file names a ``base`` recipe (a path relative to the sweep file) and its cells:

    base: ../math.yaml
    grid:                                 # the cartesian product of these values ...
      model.loss.init_args.beta: [1.0, 0.5]
    cells:                                # ... or a list of cells, each a set of overrides
      - name: rft                         #   (optional; default: its overrides)
        config: rft.yaml                  #   overlay recipe(s), relative to the sweep file
        model.optimizer.init_args.lr: 2.5e-6
    per_cell:                             # overrides for every cell; "{cell}" is its name,
      model.export_dir: runs/beta/{cell}/policy   #   "{sweep}" the sweep's
    metrics: [train/loss]                 # summary columns; default train/loss and eval/*
    evaluate: false                       # also `nsa evaluate` each trained policy
    name: beta                            # the sweep's name; default the file's stem
                                          #   (`--name` overrides it: one file, several sweeps)

Each cell is ``nsa fit`` in this process, logging into its own MLflow child run of one parent
run. Cells share the data stages' cache, so a sweep over losses samples and judges once. A
cell whose child run is FINISHED (with the same overrides and recipe files) is skipped, so a
killed or failed sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import itertools
import json
import math
import re
import shlex
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from nsa.errors import NSAError, yaml_error
from nsa.log import notice
from nsa.tables import format_table
from nsa.tracking import check_server, child_runs, experiment_id, latest_run, new_run

KEYS = {"base", "grid", "cells", "per_cell", "metrics", "evaluate", "name"}


@dataclass
class Cell:
    name: str
    args: list[str]  # the arguments of `nsa fit` after "fit", without the MLflow run id
    fingerprint: str  # the overrides and the recipe files' text: a changed cell runs again


@dataclass
class Sweep:
    path: Path
    name: str
    cells: list[Cell]
    metrics: list[str] | None
    evaluate: bool


def load(path: str, extra: list[str], name: str | None = None) -> Sweep:
    """Read a sweep file; ``extra`` are overrides for every cell (from the command line) and
    ``name`` replaces the file's ``name:``."""
    file = Path(path)
    if not file.is_file():
        raise NSAError(f"sweep file not found: {path}")
    try:
        spec = check_spec(yaml.safe_load(file.read_text()), path)
    except yaml.YAMLError as err:
        raise yaml_error(f"sweep {path}", err) from None
    raw = grid_cells(spec["grid"], path) if "grid" in spec else listed_cells(spec["cells"], path)
    names = [cell for cell, _, _ in raw]
    if len(set(names)) != len(names):
        raise NSAError(f"sweep {path}: two cells share a name in {names}")
    name = str(name or spec.get("name") or file.stem)
    if "'" in name:  # it is quoted in MLflow's run filters
        raise NSAError(f"sweep {path}: the name {name!r} may not contain a quote; set `name:` or --name")
    base, per_cell = file.parent / spec["base"], spec.get("per_cell") or {}
    per_cell = {key: with_placeholder(value, "{sweep}", path_safe(name)) for key, value in per_cell.items()}
    cells = [
        make_cell(cell, base, [file.parent / c for c in configs], per_cell, extra, overrides)
        for cell, configs, overrides in raw
    ]
    return Sweep(file, name, cells, spec.get("metrics"), bool(spec.get("evaluate")))


def check_spec(spec: object, path: str) -> dict:
    """The sweep file's top level, or a one-line error naming what is wrong with it."""
    if not isinstance(spec, dict):
        raise NSAError(f"sweep {path}: expected a mapping with base and grid or cells")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise NSAError(f"sweep {path}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(KEYS))}")
    if not spec.get("base"):
        raise NSAError(f"sweep {path}: no base recipe; set `base:` (a path relative to the sweep file)")
    if ("grid" in spec) == ("cells" in spec):
        raise NSAError(f"sweep {path}: give either `grid` or `cells`, not {'both' if 'grid' in spec else 'neither'}")
    if not isinstance(spec.get("per_cell") or {}, dict):
        raise NSAError(f"sweep {path}: per_cell must map dotted keys to values")
    metrics = spec.get("metrics")
    if metrics is not None and not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise NSAError(f"sweep {path}: metrics must be a list of metric names, e.g. [train/loss]")
    return spec


def grid_cells(grid: dict, path: str) -> list[tuple[str, list[str], dict]]:
    """One cell per combination, named ``beta=0.5,rule=any`` (key tails, or whole keys if tails clash)."""
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise NSAError(f"sweep {path}: grid must map each dotted key to a non-empty list of values")
    tails = [key.rsplit(".", 1)[-1] for key in grid]
    labels = tails if len(set(tails)) == len(tails) else list(grid)
    cells = []
    for values in itertools.product(*grid.values()):
        name = ",".join(f"{label}={value_text(v)}" for label, v in zip(labels, values))
        cells.append((name, [], dict(zip(grid, values))))
    return cells


def listed_cells(cells: list, path: str) -> list[tuple[str, list[str], dict]]:
    if not isinstance(cells, list) or not cells or not all(isinstance(c, dict) for c in cells):
        raise NSAError(f"sweep {path}: cells must be a non-empty list of mappings (dotted key: value)")
    out = []
    for cell in cells:
        overrides = {k: v for k, v in cell.items() if k not in ("name", "config")}
        configs = cell.get("config") or []
        configs = [configs] if isinstance(configs, str) else list(configs)
        default = ",".join(f"{k.rsplit('.', 1)[-1]}={value_text(v)}" for k, v in overrides.items()) or "base"
        out.append((str(cell.get("name") or default), configs, overrides))
    return out


def make_cell(name: str, base: Path, configs: list[Path], per_cell: dict, extra: list[str], overrides: dict) -> Cell:
    """``--config base [--config overlay] per_cell extra overrides``: later ones win."""
    for file in (base, *configs):
        if not file.is_file():
            raise NSAError(f"sweep cell {name}: recipe file not found: {file}")
    templated = {key: with_placeholder(value, "{cell}", path_safe(name)) for key, value in per_cell.items()}
    flags = (
        [override(k, v) for k, v in templated.items()] + list(extra) + [override(k, v) for k, v in overrides.items()]
    )
    args = ["--config", str(base), *(f"--config={c}" for c in configs), *flags]
    texts = [file.read_text() for file in (base, *configs)]
    fingerprint = hashlib.sha256(json.dumps([texts, flags]).encode()).hexdigest()[:16]
    return Cell(name, args, fingerprint)


def override(key: str, value: object) -> str:
    return f"--{key}={value_text(value)}"


def value_text(value: object) -> str:
    """A value as jsonargparse reads it; a list of names stays ``[A,B]`` so short plugin names resolve."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list) and all(isinstance(v, str | int | float) and "," not in str(v) for v in value):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def with_placeholder(value: object, placeholder: str, text: str) -> object:
    """Replace ``placeholder`` in every string of a value (plain replace: other braces are left alone)."""
    if isinstance(value, str):
        return value.replace(placeholder, text)
    if isinstance(value, list):
        return [with_placeholder(v, placeholder, text) for v in value]
    if isinstance(value, dict):
        return {k: with_placeholder(v, placeholder, text) for k, v in value.items()}
    return value


def path_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)


def fit_args(cell: Cell, run_id: str | None) -> list[str]:
    """The cell's ``nsa fit`` arguments, short plugin names resolved as ``nsa.cli.main`` resolves a command's."""
    from nsa.commands import with_plugin_names

    tracked = [f"--trainer.logger.init_args.run_id={run_id}"] if run_id else []
    return with_plugin_names([*cell.args, *tracked])


def resolve(cell: Cell) -> dict:
    """The cell's fully resolved config, parsed and checked with nothing built: every override
    is checked before any cell trains."""
    from nsa.cli import one_line
    from nsa.commands import recipe_config

    try:
        return recipe_config(fit_args(cell, None))
    except SystemExit as stop:
        if stop.code in (0, None):  # a --help or --print_config among the overrides: printed, as asked
            raise
        raise NSAError(f"sweep cell {cell.name}: its config does not parse") from None
    except (NSAError, argparse.ArgumentError) as err:
        raise NSAError(f"sweep cell {cell.name}: {one_line(str(err))}") from None


def tracking(configs: dict[str, dict]) -> tuple[str, str]:
    """The (tracking_uri, experiment_name) every cell logs to: one MLFlowLogger, shared by all cells."""
    places = set()
    for name, config in configs.items():
        logger = config["trainer"].get("logger")
        if not isinstance(logger, dict) or not str(logger.get("class_path", "")).endswith("MLFlowLogger"):
            raise NSAError(f"sweep cell {name}: trainer.logger must be an MLFlowLogger (a sweep is tracked in MLflow)")
        places.add((logger["init_args"]["tracking_uri"], logger["init_args"]["experiment_name"]))
    if len(places) != 1:
        raise NSAError(f"sweep cells must share one tracking_uri and experiment_name, got {sorted(places)}")
    return places.pop()


def check_folders(configs: dict[str, dict]) -> None:
    """Cells must not overwrite each other's trained policy or resume from each other's checkpoints."""
    for what, folders in (("model.export_dir", export_dirs(configs)), ("checkpoint dirpath", ckpt_dirs(configs))):
        seen: dict[str, str] = {}
        for name, folder in folders:
            if folder in seen:
                raise NSAError(
                    f"sweep cells {seen[folder]} and {name} share {what} {folder}; "
                    "set it per cell (per_cell: with {cell} in the path)"
                )
            seen[folder] = name


def export_dirs(configs: dict[str, dict]) -> list[tuple[str, str]]:
    return [(n, c["model"]["export_dir"]) for n, c in configs.items() if c["model"].get("export_dir")]


def ckpt_dirs(configs: dict[str, dict]) -> list[tuple[str, str]]:
    """Explicit ModelCheckpoint folders (without one, Lightning checkpoints under the run's own id)."""
    out = []
    for name, config in configs.items():
        for callback in config["trainer"].get("callbacks") or []:
            dirpath = isinstance(callback, dict) and (callback.get("init_args") or {}).get("dirpath")
            if dirpath:
                out.append((name, dirpath))
    return out


# --- MLflow: one parent run per sweep, one child run per cell ---------------------------------


def parent_run(client, experiment: str, sweep: Sweep, fresh: bool) -> str:
    """The sweep's latest parent run (resumed), or a new one when there is none or ``fresh``."""
    tags = {"nsa.command": "sweep", "nsa.sweep": sweep.name}
    found = latest_run(client, experiment, tags)
    if found and not fresh:
        run_id = found.info.run_id
        client.update_run(run_id, status="RUNNING")
        print(f"nsa: sweep {sweep.name}: resuming MLflow run {run_id}", file=sys.stderr)
    else:
        run_id = new_run(client, experiment, sweep.name, tags).info.run_id
    client.log_artifact(run_id, str(sweep.path))  # again on resuming: the file may have been fixed
    return run_id


def finished_children(client, experiment: str, parent: str) -> dict[tuple[str, str], str]:
    """(cell name, fingerprint) -> the run id of its FINISHED child; a child left RUNNING by a
    killed sweep is marked KILLED (its cell runs again)."""
    done = {}
    for child in child_runs(client, experiment, parent):
        tags = child.data.tags
        if child.info.status == "FINISHED":
            done[(tags.get("nsa.cell"), tags.get("nsa.cell_fingerprint"))] = child.info.run_id
        elif child.info.status == "RUNNING":
            client.set_terminated(child.info.run_id, "KILLED")
    return done


def finished_cells(client, experiment: str, parent: str, sweep: Sweep) -> dict[str, str]:
    """The sweep's cells, in its order, that have a FINISHED child of their current fingerprint."""
    done = finished_children(client, experiment, parent)
    return {cell.name: done[key] for cell in sweep.cells if (key := (cell.name, cell.fingerprint)) in done}


def run_cell(client, experiment: str, parent: str, sweep: Sweep, cell: Cell) -> str:
    """``nsa fit`` (and ``nsa evaluate``) of one cell in a new child run; FAILED if it raises."""
    from nsa import commands

    tags = {"nsa.cell": cell.name, "nsa.cell_fingerprint": cell.fingerprint, "nsa.sweep": sweep.name}
    child = new_run(client, experiment, cell.name, tags, parent).info.run_id
    print(f"nsa: sweep {sweep.name}: cell {cell.name} (MLflow run {child})", file=sys.stderr)
    try:
        args = fit_args(cell, child)
        commands.fit(args)
        if sweep.evaluate:
            client.update_run(child, status="RUNNING")  # fit finished the run; the cell is not done yet
            commands.evaluate(args)
    except BaseException as err:  # an interrupt too: the child must not stay RUNNING
        client.set_terminated(child, "FAILED")
        if isinstance(err, Exception):
            raise cell_error(cell, err) from None
        raise
    client.set_tag(child, "nsa.command", "fit,evaluate" if sweep.evaluate else "fit")
    client.set_terminated(child, "FINISHED")
    return child


def cell_error(cell: Cell, err: Exception) -> NSAError:
    from nsa.cli import one_line

    if not isinstance(err, NSAError | argparse.ArgumentError | ValueError):
        traceback.print_exc()  # an unexpected failure: keep the trace above the one-line error
    text = one_line(str(err)) or type(err).__name__
    return NSAError(f"sweep cell {cell.name} failed: {text}; finished cells are kept, rerun the sweep to resume")


# --- the summary: cells x metrics ---------------------------------------------------------------


def summary(client, children: dict[str, str], metrics: list[str] | None) -> tuple[list[str], list[dict]]:
    """The metric columns and one row per cell: each metric's last value in the cell's child run."""
    logged = {name: client.get_run(run_id).data.metrics for name, run_id in children.items()}
    if metrics is None:
        evals = sorted({k for m in logged.values() for k in m if k.startswith("eval/")})
        metrics = ["train/loss", *evals]
    rows = [{"cell": name, **{m: values.get(m) for m in metrics}} for name, values in logged.items()]
    return metrics, rows


def format_summary(metrics: list[str], rows: list[dict]) -> str:
    cells = [[row["cell"], *("-" if row[m] is None else f"{row[m]:.4g}" for m in metrics)] for row in rows]
    return format_table(["cell", *metrics], cells)


def plot_summary(metrics: list[str], rows: list[dict], path: Path) -> None:
    """One bar chart per metric, a bar per cell (matplotlib's Agg canvas: no display needed)."""
    from matplotlib.figure import Figure

    names = [row["cell"] for row in rows]
    figure = Figure(figsize=(max(4.0, 0.9 * len(names) + 2), 2.6 * len(metrics)), layout="constrained")
    for axes, metric in zip(figure.subplots(len(metrics), 1, squeeze=False)[:, 0], metrics):
        values = [math.nan if row[metric] is None else row[metric] for row in rows]
        axes.bar(names, values, color="tab:blue")
        axes.set_title(metric)
        axes.tick_params(axis="x", labelrotation=30)
    figure.savefig(path, dpi=100)


def log_summary(client, parent: str, metrics: list[str], rows: list[dict]) -> None:
    table = {column: [row[column] for row in rows] for column in ["cell", *metrics]}
    client.log_table(parent, data=table, artifact_file="sweep/summary.json")
    client.log_text(parent, format_summary(metrics, rows) + "\n", "sweep/summary.txt")
    with tempfile.TemporaryDirectory() as folder:
        png = Path(folder) / "summary.png"
        plot_summary(metrics, rows, png)
        client.log_artifact(parent, str(png), "sweep")


# --- the command --------------------------------------------------------------------------------


def parse(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="nsa sweep",
        description="Run the cells of a sweep file (a base recipe and its overrides; all, or those --cells names) "
        "as `nsa fit`, tracked as MLflow child runs of one parent run; further --key=value overrides apply to "
        "every cell.",
    )
    parser.add_argument("--config", required=True, help="the sweep file")
    parser.add_argument("--name", help="the sweep's name (its MLflow parent run and {sweep}); default: the file's")
    parser.add_argument("--fresh", action="store_true", help="start a new parent run instead of resuming")
    parser.add_argument("--dry_run", action="store_true", help="check every cell and list them; train nothing")
    parser.add_argument(
        "--cells",
        nargs="+",
        action="extend",
        metavar="CELL",
        help="run only the cells so named (default: all); the summary still shows every finished cell",
    )
    return parser.parse_known_args(args)


def only(sweep: Sweep, names: list[str] | None) -> Sweep:
    """The sweep with only the cells named, in the file's order; an unknown name is a one-line error."""
    if names is None:
        return sweep
    if not names:
        raise NSAError(f"sweep {sweep.path}: --cells names no cell; name one or more, or leave --cells out for all")
    known = [cell.name for cell in sweep.cells]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise NSAError(f"sweep {sweep.path}: --cells names no cell {name!r}; {hint}its cells: {', '.join(known)}")
    return Sweep(
        sweep.path, sweep.name, [cell for cell in sweep.cells if cell.name in names], sweep.metrics, sweep.evaluate
    )


def run(args: list[str]) -> None:
    """``nsa sweep --config SWEEP [--fresh] [--dry_run] [--cells CELL ...] [--key=value ...]``."""
    from mlflow import MlflowClient

    known, extra = parse(args)
    whole = load(known.config, extra, known.name)
    sweep = only(whole, known.cells)
    configs = {cell.name: resolve(cell) for cell in sweep.cells}  # every cell parses before any trains
    uri, experiment_name = tracking(configs)
    check_server(uri)  # before any cell trains: MLflow's client would retry for minutes
    check_folders(configs)
    if known.dry_run:
        for cell in sweep.cells:
            print(f"{cell.name}: nsa fit {shlex.join(cell.args)}")
        return
    client = MlflowClient(uri)
    experiment = experiment_id(client, experiment_name)
    parent = parent_run(client, experiment, sweep, known.fresh)
    run_cells(client, experiment, parent, sweep)
    children = finished_cells(client, experiment, parent, whole)  # those of earlier --cells runs too
    metrics, rows = summary(client, children, sweep.metrics)
    print(format_summary(metrics, rows))
    log_summary(client, parent, metrics, rows)
    client.set_terminated(parent, "FINISHED")
    print(f"nsa: sweep {sweep.name}: {len(rows)} cells, summary logged to MLflow run {parent}", file=sys.stderr)
    if len(children) < len(whole.cells):
        left = [cell.name for cell in whole.cells if cell.name not in children]
        notice(f"sweep {sweep.name}: cells {', '.join(left)} have not run; run without --cells for them")


def run_cells(client, experiment: str, parent: str, sweep: Sweep) -> None:
    """Run the cells that have no finished child run; the parent FAILS with a cell."""
    done = finished_children(client, experiment, parent)
    for cell in sweep.cells:
        if (cell.name, cell.fingerprint) in done:
            print(f"nsa: sweep {sweep.name}: cell {cell.name} already finished, skipped", file=sys.stderr)
            continue
        try:
            run_cell(client, experiment, parent, sweep, cell)
        except BaseException:
            client.set_terminated(parent, "FAILED")
            raise
