"""``nsa iterate --config R --iterations N``: the paper's repeated rounds, each an MLflow child run.

Iteration k samples again with the policy iteration k-1 trained (the recipe's ``model.policy``
for k = 1), verifies, judges and trains it into ``<model.export_dir>/iter<k>``, then runs the
recipe's ``evaluate:`` section on the result when it names benchmarks. The data stages are
keyed by the policy's files, so each iteration samples anew while a rerun reuses them.

All iterations hang under one parent run (tag ``nsa.command=iterate``), found again by a key of
the command's arguments: a stopped ``nsa iterate`` started again skips the iterations tagged
done and repeats the one that was cut off (its data stages come from the cache).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from nsa.errors import NSAError


def run(args: list[str]) -> None:
    own = argparse.ArgumentParser(prog="nsa iterate", add_help=False)
    own.add_argument("--iterations", type=int)
    known, rest = own.parse_known_args(args)
    if known.iterations is None and not {"-h", "--help"} & set(rest):  # help: the recipe's options
        raise NSAError("nsa iterate needs --iterations N (N >= 1) beside --config R")
    if known.iterations is not None and known.iterations < 1:
        raise NSAError(f"--iterations {known.iterations}: give at least 1")
    start, export_dir, client, experiment = _recipe(rest)
    parent = _parent(client, experiment, rest)
    policy = start
    for k in range(1, known.iterations + 1):
        target = str(Path(export_dir) / f"iter{k}")
        child = _child(client, experiment, parent, k)
        if child.data.tags.get("nsa.done") == "true":
            print(f"nsa: iterate: iteration {k} done before, policy {target}", file=sys.stderr)
        else:
            _iteration(rest, child.info.run_id, policy, target)
            client.set_tag(child.info.run_id, "nsa.done", "true")
        policy = target
    client.set_terminated(parent)
    print(f"nsa: iterate: {known.iterations} iterations, last policy {policy}", file=sys.stderr)


def _recipe(args: list[str]):
    """The start policy, the export folder, and the MLflow client and experiment of the recipe."""
    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger

    from nsa.commands import parse_recipe
    from nsa.tracking import experiment_id

    cli = parse_recipe(args, "nsa iterate", one_process=True)
    if not cli.model.export_dir:
        raise NSAError("nsa iterate needs model.export_dir: each iteration's policy is saved under it")
    loggers = [lg for lg in cli.trainer.loggers if isinstance(lg, MLFlowLogger)]
    if not loggers:
        raise NSAError("nsa iterate tracks its iterations in MLflow: set trainer.logger to an MLFlowLogger")
    logger = loggers[0]  # its tracking store and experiment; its own run is never created
    client = mlflow.MlflowClient(logger._tracking_uri)
    return cli.model.policy_spec, cli.model.export_dir, client, experiment_id(client, logger._experiment_name)


def _parent(client, experiment: str, args: list[str]) -> str:
    """The parent run of these arguments (the latest), or a new one: more iterations extend it."""
    from nsa.tracking import latest_run, new_run

    tags = {"nsa.command": "iterate", "nsa.iterate_key": hashlib.sha256(json.dumps(args).encode()).hexdigest()[:16]}
    found = latest_run(client, experiment, tags)
    return (found or new_run(client, experiment, "iterate", tags)).info.run_id


def _child(client, experiment: str, parent: str, k: int):
    """Iteration ``k``'s run under ``parent``: the one a stopped ``nsa iterate`` left, or a new one."""
    from nsa.tracking import latest_run, new_run

    tags = {"nsa.iteration": str(k)}
    return latest_run(client, experiment, tags, parent) or new_run(client, experiment, f"iteration {k}", tags, parent)


def _iteration(args: list[str], run_id: str, policy: str, target: str) -> None:
    """Fit from ``policy`` into ``target``, then evaluate ``target``; both log to ``run_id``."""
    from nsa.commands import evaluate, fit

    print(f"nsa: iterate: training {policy} -> {target}", file=sys.stderr)
    place = [f"--model.policy={policy}", f"--model.export_dir={target}", f"--trainer.logger.init_args.run_id={run_id}"]
    cli = fit([*args, *place])
    if cli.config_init["fit"]["evaluate"].benchmarks:
        evaluate([*args, *place, f"--evaluate.policy={target}"])
