"""The toy experiment, end to end, in one command; prints the results table.

    python benchmarks/toy_nsa/run.py                 # seeds 0 1 2, about 15 minutes on 2 cores

Run it from the repository root (the recipe's paths are relative to it). For each seed k:

1. runs/toy_nsa/seed<k>/train.jsonl, the training problems (``arithmetic.py``); the held-out
   set, runs/toy_nsa/heldout.jsonl, is the same for every seed and in no training data;
2. runs/toy_nsa/seed<k>/sft, the start policy, pretrained by SFT on noisy worked solutions
   (``pretrain.py``);
3. ``nsa evaluate`` of the start policy on the held-out set;
4. ``nsa sweep --config benchmarks/toy_nsa/sweep.yaml --name toy-seed<k>``: every method
   trains on the same cached rollouts and verdicts into runs/toy_nsa/toy-seed<k>/<cell>/, and
   each result is evaluated.

Everything is tracked in runs/toy_nsa/mlflow.db, and the table is read back from there.
Run again, it skips what is done: a pretrained policy is kept, the evaluations and the sweep
cells resume from MLflow and the stage cache. The sizes (--train, --heldout,
--pretrain_steps) are written to runs/toy_nsa/settings.json, and a run with other sizes is
refused rather than mixed with the old results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from arithmetic import heldout, train, write_jsonl  # noqa: E402  (scripts beside this one)
from pretrain import pretrain  # noqa: E402

ROOT = Path("runs/toy_nsa")  # relative to the working directory, like the paths in toy.yaml
TRACKING = f"sqlite:///{ROOT}/mlflow.db"
AVG, PASS = "eval/toy/avg_at_4", "eval/toy/pass_at_4"  # percent, as nsa evaluate logs them
SIZES = ("train", "heldout", "pretrain_steps")
METHODS = [  # (row label, sweep cell)
    ("RFT", "rft"),
    ("GRPO-offline", "grpo-offline"),
    ("BCPG (beta=1)", "bcpg"),
    ("BCPG-NSA beta=0.5", "nsa-0.5"),
    ("BCPG-NSA beta=0", "nsa-0"),
    ("BCPG-NSA beta=-0.5", "nsa--0.5"),
]
JUDGES = [  # (row label, sweep cell): BCPG-NSA, beta 0.5, steps mined by ...
    ("oracle (exact, in context)", "judge-oracle"),
    ("arithmetic only", "judge-arithmetic"),
    ("PRM-like (FP 0.2, FN 0.1)", "judge-prm"),
    ("LLM-like (FP 0.1, FN 0.2)", "judge-llm"),
    ("consensus of the two (AND)", "nsa-0.5"),
]


class ToyError(Exception):
    """A one-line reason to stop, printed without a traceback."""


def seed_overrides(seed: int) -> list[str]:
    folder = ROOT / f"seed{seed}"
    return [
        f"--seed_everything={seed}",
        f"--model.policy={folder / 'sft'}",
        f"--data.problems={folder / 'train.jsonl'}",
        f"--data.sampler.init_args.seed={seed}",
        f"--data.seed={seed}",
    ]


def check_sizes(args: argparse.Namespace) -> None:
    """Keep one experiment's sizes in runs/toy_nsa: other sizes would silently reuse its results."""
    path, sizes = ROOT / "settings.json", {key: getattr(args, key) for key in SIZES}
    if path.exists() and json.loads(path.read_text()) != sizes:
        old = " ".join(f"--{k} {v}" for k, v in json.loads(path.read_text()).items())
        raise ToyError(f"{ROOT} holds an experiment run with {old}; use those, or move {ROOT} away to start over")
    ROOT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sizes) + "\n")


def prepare(seed: int, args: argparse.Namespace) -> None:
    """The seed's training problems and pretrained start policy (kept when already there)."""
    folder, held_out = ROOT / f"seed{seed}", heldout(args.heldout)
    write_jsonl(train(seed, args.train, held_out), folder / "train.jsonl")
    if not (folder / "sft").is_dir():
        exclude = frozenset(row["question"] for row in held_out)
        pretrain(seed, folder / "sft", exclude, steps=args.pretrain_steps)


def run_seed(seed: int) -> None:
    from nsa.cli import main

    overrides = seed_overrides(seed)
    start_policy = f"--evaluate.policy={ROOT / f'seed{seed}' / 'sft'}"
    main(["evaluate", "--config", str(HERE / "toy.yaml"), *overrides, start_policy])
    main(["sweep", "--config", str(HERE / "sweep.yaml"), "--name", f"toy-seed{seed}", *overrides])


# --- the table, read back from MLflow --------------------------------------------------------


def start_metrics(client, experiment_id: str, seed: int) -> dict[str, float]:
    """The latest finished evaluation of seed ``seed``'s start policy."""
    policy = str(ROOT / f"seed{seed}" / "sft")
    found = client.search_runs(
        [experiment_id],
        f"tags.`nsa.command` = 'evaluate' and params.`eval/policy` = '{policy}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        raise ToyError(f"no finished evaluation of {policy} in {TRACKING}; run without --table_only")
    return found[0].data.metrics


def cell_metrics(client, experiment_id: str, seed: int) -> dict[str, dict[str, float]]:
    """cell -> metrics of its latest finished run in sweep toy-seed<seed> with the cell's current
    fingerprint (recipe files and overrides), so results of an edited recipe never mix in."""
    from nsa.sweep import load

    sweep = load(str(HERE / "sweep.yaml"), seed_overrides(seed), f"toy-seed{seed}")
    found = client.search_runs(
        [experiment_id],
        f"tags.`nsa.sweep` = 'toy-seed{seed}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    out = {}
    for cell in sweep.cells:
        tags = {"nsa.cell": cell.name, "nsa.cell_fingerprint": cell.fingerprint}
        runs = [run for run in found if all(run.data.tags.get(k) == v for k, v in tags.items())]
        if not runs:
            raise ToyError(f"sweep toy-seed{seed} has no finished cell {cell.name} of the current recipe; rerun")
        out[cell.name] = runs[0].data.metrics
    return out


def results(seeds: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """row key ("start" or a cell name) -> seed -> metrics."""
    from mlflow import MlflowClient

    client = MlflowClient(TRACKING)
    experiment = client.get_experiment_by_name("nsa-toy")
    if experiment is None:
        raise ToyError(f"no toy experiment in {TRACKING}; run without --table_only")
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for seed in seeds:
        rows.setdefault("start", {})[seed] = start_metrics(client, experiment.experiment_id, seed)
        for cell, metrics in cell_metrics(client, experiment.experiment_id, seed).items():
            rows.setdefault(cell, {})[seed] = metrics
    return rows


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:5.1f}" if values else "    -"
    return f"{statistics.mean(values):5.1f} ± {statistics.stdev(values):4.1f}"


def line(label: str, runs: list[dict[str, float]], start: list[dict[str, float]], extra: str = "") -> str:
    """avg@4, its gain over the same seed's start policy, pass@4 (mean ± std), avg@4 per seed."""
    accuracy = [run[AVG] for run in runs]
    gain = [run[AVG] - first[AVG] for run, first in zip(runs, start)]
    pass_k = [run[PASS] for run in runs]
    seeds = " ".join(f"{a:5.1f}" for a in accuracy)
    return f"{label:<28} {mean_std(accuracy):>12} {mean_std(gain):>12} {mean_std(pass_k):>12}  {seeds}{extra}"


def versus(runs: list[dict[str, float]], baseline: list[dict[str, float]]) -> str:
    """The paired difference in avg@4 from ``baseline`` on the same seed: what a method adds to it."""
    return f"  {mean_std([run[AVG] - base[AVG] for run, base in zip(runs, baseline)]):>12}"


def mined(runs: list[dict[str, float]]) -> str:
    """Percent of the negatives' tokens that the cell's consensus mines (the paper: 26M of 118M)."""
    shares = [100 * run["data/tokens_correct/consensus"] / run["data/tokens_negative"] for run in runs]
    return f"  {mean_std(shares):>12}"


def table(results: dict[str, dict[int, dict[str, float]]], seeds: list[int]) -> str:
    """The methods' table and the judges' table; every column pairs runs of the same seed."""
    rows = {key: [by_seed[seed] for seed in seeds] for key, by_seed in results.items()}
    header = f"{'':<28} {'avg@4 %':>12} {'gain':>12} {'pass@4 %':>12}  avg@4 of seeds {', '.join(map(str, seeds))}"
    start, bcpg, consensus = rows["start"], rows["bcpg"], rows["nsa-0.5"]
    return "\n".join(
        [
            f"toy_nsa: held-out accuracy, mean ± std over {len(seeds)} seeds (gain: over the seed's start policy;",
            "vs: avg@4 minus that of the row named, on the same seed)",
            f"{header}  {'vs BCPG':>12}",
            line("start policy (SFT)", start, start),
            *(line(label, rows[cell], start, versus(rows[cell], bcpg)) for label, cell in METHODS),
            "",
            "BCPG-NSA (beta=0.5), steps mined by:",
            f"{header}  {'mined %':>12}  {'vs consensus':>12}",
            *(
                line(label, rows[cell], start, mined(rows[cell]) + versus(rows[cell], consensus))
                for label, cell in JUDGES
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=256, help="training problems per seed")
    parser.add_argument("--heldout", type=int, default=256, help="held-out problems (the same for every seed)")
    parser.add_argument("--pretrain_steps", type=int, default=900, help="SFT steps of the start policy")
    parser.add_argument("--table_only", action="store_true", help="print the table of what has run; run nothing")
    args = parser.parse_args()
    try:
        if not args.table_only:
            run_all(args)
        print(table(results(args.seeds), args.seeds))
    except ToyError as err:
        print(f"toy_nsa: error: {err}", file=sys.stderr)
        sys.exit(2)


def run_all(args: argparse.Namespace) -> None:
    check_sizes(args)
    start = time.perf_counter()
    write_jsonl(heldout(args.heldout), ROOT / "heldout.jsonl")
    for seed in args.seeds:
        prepare(seed, args)
        run_seed(seed)
        print(f"toy_nsa: seed {seed} done at {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
