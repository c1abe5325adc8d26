"""The toy experiment, end to end, in one command; prints the tables and draws the picture.

    python benchmarks/toy_nsa/run.py                 # short chains, seeds 0 1, avg@4: about 27 minutes

Run it from the repository root (the recipe's paths are relative to it). For each setting
(``--settings``: ``short``, ``long``, see arithmetic.SETTINGS) and seed k, under
runs/toy_nsa/<setting>/:

1. seed<k>/train.jsonl, the training problems (``arithmetic.py``); heldout-<n>.jsonl, the
   held-out set, the same for every seed and in no training data;
2. seed<k>/sft, the start policy, pretrained by SFT on noisy worked solutions (``pretrain.py``);
3. ``nsa evaluate`` of the start policy on the held-out set (``--samples`` answers a problem);
4. ``nsa sweep --config benchmarks/toy_nsa/sweep.yaml --name toy-<setting>-<n>x<samples>-seed<k>``:
   every method (with ``--registered``, those the comparisons read) trains on the same cached
   rollouts and verdicts, and each result is evaluated;
5. with ``--iterations K`` (K >= 2), ``nsa iterate --iterations K`` of RFT, BCPG and BCPG-NSA,
   after evaluating their start policy again (``round0``: pretrained anew when ``--saved``
   holds the seed's sweep, and not always bit for bit the same across machines).

Runs of other evaluation sizes (``--heldout``, ``--samples``) live side by side: they share
the problems, start policies and stage cache, and train their own cells.

Everything is tracked in runs/toy_nsa/mlflow.db, and the tables are read back from there
(report.py; statistics in stats.py). Run again, it skips what is done: a pretrained policy is
kept, a killed pretraining goes on from its last saved state, evaluations, sweep cells and
rounds resume from MLflow and the stage cache; with ``--saved powered.json``, what the results
file of an earlier run (another machine, another session) holds of a seed does not run again.
The sizes and the kind of chain are written to runs/toy_nsa/<setting>/settings.json, and a run
with others is refused rather than mixed with the old results (evaluation sizes may differ:
they name the runs). A start policy that has not learnt its chains (check_learnt) stops the
run. Runs are found in MLflow by their names and the policies' paths, which hold neither sizes
nor kind: starting over means moving all of runs/toy_nsa away, not one setting's folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from arithmetic import SETTINGS, heldout, train, write_jsonl  # noqa: E402  (scripts beside this one)
from pretrain import pretrain, sft_loss  # noqa: E402
from report import ITERATED, REGISTERED, Results, figure, keys, table  # noqa: E402

ROOT = Path("runs/toy_nsa")  # relative to the working directory, like the paths in toy.yaml
TRACKING = f"sqlite:///{ROOT}/mlflow.db"
SIZES = ("train", "pretrain_steps")  # what the shared problems and start policies are made with
PROBLEM_FILE = "nsa.plugins.benchmarks.problem_file.ProblemFile"
# A start policy whose loss on fresh noisy chains (pretrain.sft_loss) is above this has not
# learnt them, and nothing trained from it measures the methods. Measured: 0.121 for short
# seed 0 and 0.105 for long seed 0, which learnt; 0.444 for long seed 1 after 900 steps, whose
# negatives held no right step (it learnt in 1800 steps, ending at a training loss of 0.04).
LEARNT = 0.3
# MLflow finds runs by their names and the policies' paths, which hold no size: moving one
# setting's folder away would pair new start policies with the old policies' cells
START_OVER = f"save the tables (--table_only), then move all of {ROOT} away to start over"


class ToyError(Exception):
    """A one-line reason to stop, printed without a traceback."""


def label(args: argparse.Namespace) -> str:
    """The evaluation's size, in the names of everything it measures: ``512x16``."""
    return f"{args.heldout}x{args.samples}"


def sweep_name(setting: str, seed: int, args: argparse.Namespace) -> str:
    return f"toy-{setting}-{label(args)}-seed{seed}"


def heldout_file(setting: str, args: argparse.Namespace) -> Path:
    return ROOT / setting / f"heldout-{args.heldout}.jsonl"


def seed_overrides(setting: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The recipe's seed-0 short-chain paths and sizes, made seed ``seed``'s of ``setting``."""
    folder, lengths, samples = ROOT / setting / f"seed{seed}", SETTINGS[setting].max_new_tokens, args.samples
    held_out = {"source": str(heldout_file(setting, args)), "name": "toy", "prompt_template": "{question}\n"}
    return [
        f"--seed_everything={seed}",
        f"--model.policy={folder / 'sft'}",
        f"--data.problems={folder / 'train.jsonl'}",
        f"--data.sampler.init_args.seed={seed}",
        f"--data.sampler.init_args.max_new_tokens={lengths}",
        f"--data.seed={seed}",
        f"--evaluate.benchmarks={json.dumps([{'class_path': PROBLEM_FILE, 'init_args': {**held_out, 'workers': 2}}])}",
        f"--evaluate.sampler.init_args.num_samples={samples}",
        f"--evaluate.sampler.init_args.max_new_tokens={lengths}",
        f"--evaluate.pass_k=[1,{samples}]",
    ]


def made_with(setting: str, args: argparse.Namespace) -> dict:
    """What a setting's problems and start policies are made with: the sizes, and the chains'
    lengths, slips, format and policy width (arithmetic.SETTINGS)."""
    sizes = {key: getattr(args, key) for key in SIZES}
    return sizes | {f"setting.{key}": value for key, value in asdict(SETTINGS[setting]).items()}


def check_sizes(setting: str, args: argparse.Namespace) -> None:
    """Keep one experiment per setting: other sizes or another kind of chain would silently
    reuse its start policies and results."""
    folder, made = ROOT / setting, made_with(setting, args)
    path = folder / "settings.json"
    old = json.loads(path.read_text()) if path.exists() else made
    if old != made:
        differing = [key for key in {**made, **old} if old.get(key) != made.get(key)]  # made's keys first
        differ = ", ".join(f"{key} {old.get(key)} (now {made.get(key)})" for key in differing)
        raise ToyError(f"{folder} holds an experiment of {differ}; {START_OVER}")
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(made) + "\n")


def prepare(setting: str, seed: int, args: argparse.Namespace) -> None:
    """The seed's training problems and pretrained start policy (kept when already there)."""
    folder, chains = ROOT / setting / f"seed{seed}", SETTINGS[setting]
    held_out = heldout(args.heldout, chains)
    write_jsonl(held_out, heldout_file(setting, args))
    write_jsonl(train(seed, args.train, held_out, chains), folder / "train.jsonl")
    if not (folder / "sft").is_dir():
        exclude = frozenset(row["question"] for row in held_out)
        pretrain(seed, folder / "sft", exclude, steps=args.pretrain_steps, setting=chains)


def check_learnt(setting: str, seed: int, args: argparse.Namespace) -> None:
    """Refuse a start policy that has not learnt its chains (see LEARNT), before any method
    trains from it; the whole setting is then pretrained longer, every seed alike."""
    policy = ROOT / setting / f"seed{seed}" / "sft"
    loss = sft_loss(policy, seed, SETTINGS[setting])
    print(f"toy_nsa: {policy}: loss {loss:.3f} on fresh chains", file=sys.stderr)
    if loss > LEARNT:
        raise ToyError(
            f"{policy} has not learnt its chains (loss {loss:.3f} on fresh ones, above {LEARNT}); pretrain every "
            f"seed longer, --pretrain_steps {2 * args.pretrain_steps}: {START_OVER}"
        )


def cells(setting: str, seed: int, args: argparse.Namespace):
    """The sweep's cells for this seed (with ``--registered``, those the comparisons read):
    their names, `nsa fit` arguments and fingerprints."""
    from nsa.sweep import load, only

    sweep = load(str(HERE / "sweep.yaml"), seed_overrides(setting, seed, args), sweep_name(setting, seed, args))
    return only(sweep, REGISTERED if args.registered else None).cells


def iterate_folder(setting: str, seed: int, args: argparse.Namespace, cell: str) -> Path:
    """Where `nsa iterate` of one cell's method saves its rounds, iter1, iter2, ..."""
    return ROOT / setting / f"iterate-{label(args)}-seed{seed}" / cell


def iterate_args(setting: str, seed: int, args: argparse.Namespace, cell) -> list[str]:
    return [*cell.args, f"--model.export_dir={iterate_folder(setting, seed, args, cell.name)}"]


def stages(setting: str, seed: int, args: argparse.Namespace) -> dict[str, list[str]]:
    """The rows each stage of a seed's run fills: the start policy's evaluation, the sweep's
    cells, the rounds of nsa iterate (none without ``--iterations``) with ``round0``, the
    evaluation of the policy they start from (pretrained again when the sweep's rows are saved)."""
    rounds = range(1, args.iterations + 1) if args.iterations > 1 else range(0)
    iterated = [f"iter{k}/{cell}" for k in rounds for _, cell in ITERATED]
    return {
        "start": ["start"],
        "sweep": [cell.name for cell in cells(setting, seed, args)],
        "rounds": ["round0", *iterated] if iterated else [],
    }


def to_run(setting: str, seed: int, args: argparse.Namespace, have: Results) -> list[str]:
    """The seed's stages whose rows the saved results (``--saved``) do not all hold, in order."""
    held = {row for row, by_seed in have.items() if seed in by_seed}
    return [stage for stage, rows in stages(setting, seed, args).items() if rows and not set(rows) <= held]


def run_seed(setting: str, seed: int, args: argparse.Namespace, todo: list[str]) -> None:
    from nsa.cli import main

    overrides = seed_overrides(setting, seed, args)
    start_policy = f"--evaluate.policy={ROOT / setting / f'seed{seed}' / 'sft'}"
    if "start" in todo or "rounds" in todo:  # the rounds' own start (round0): this machine's pretraining
        main(["evaluate", "--config", str(HERE / "toy.yaml"), *overrides, start_policy])
    picked = ["--cells", *REGISTERED] if args.registered else []
    name = sweep_name(setting, seed, args)
    if "sweep" in todo:
        main(["sweep", "--config", str(HERE / "sweep.yaml"), "--name", name, *picked, *overrides])
    if "rounds" in todo:
        by_name = {cell.name: cell for cell in cells(setting, seed, args)}
        for _, cell in ITERATED:
            main(["iterate", "--iterations", str(args.iterations), *iterate_args(setting, seed, args, by_name[cell])])


# --- the results, read back from MLflow --------------------------------------------------------


def latest(client, experiment_id: str, query: str, what: str) -> dict[str, float]:
    found = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        raise ToyError(f"no {what} in {TRACKING}; run without --table_only")
    return found[0].data.metrics


def start_metrics(client, experiment_id: str, setting: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """The latest finished evaluation of the seed's start policy at this evaluation's size."""
    policy = str(ROOT / setting / f"seed{seed}" / "sft")
    size = f"metrics.`eval/toy/problems` = {args.heldout} and metrics.`{keys(args.samples)[0]}` >= 0"
    query = f"tags.`nsa.command` = 'evaluate' and params.`eval/policy` = '{policy}' and {size}"
    query += " and attributes.status = 'FINISHED'"
    return latest(client, experiment_id, query, f"finished {label(args)} evaluation of {policy}")


def cell_metrics(client, experiment_id: str, setting: str, seed: int, args: argparse.Namespace) -> Results:
    """cell -> {seed: metrics} of its latest finished run in the seed's sweep with the cell's
    current fingerprint (recipe files and overrides), so results of an edited recipe never mix in."""
    name = sweep_name(setting, seed, args)
    query = f"tags.`nsa.sweep` = '{name}' and attributes.status = 'FINISHED'"
    found = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"])
    out: Results = {}
    for cell in cells(setting, seed, args):
        tags = {"nsa.cell": cell.name, "nsa.cell_fingerprint": cell.fingerprint}
        runs = [run for run in found if all(run.data.tags.get(k) == v for k, v in tags.items())]
        if not runs:
            raise ToyError(
                f"sweep {name} has no finished cell {cell.name} of the current recipe; rerun "
                "(with --registered if it ran so)"
            )
        out[cell.name] = {seed: runs[0].data.metrics}
    return out


def round_metrics(client, experiment_id: str, setting: str, seed: int, args: argparse.Namespace) -> Results:
    """``iter<k>/<cell>`` -> {seed: metrics} of each finished round of nsa iterate, and
    ``round0``: the latest evaluation of the start policy, the one the rounds started from."""
    out: Results = {"round0": {seed: start_metrics(client, experiment_id, setting, seed, args)}}
    for k in range(1, args.iterations + 1):
        for _, cell in ITERATED:
            policy = iterate_folder(setting, seed, args, cell) / f"iter{k}"
            query = f"params.`eval/policy` = '{policy}' and tags.`nsa.done` = 'true'"
            out[f"iter{k}/{cell}"] = {seed: latest(client, experiment_id, query, f"finished round of {policy}")}
    return out


def start_row(client, experiment_id: str, setting: str, seed: int, args: argparse.Namespace) -> Results:
    return {"start": {seed: start_metrics(client, experiment_id, setting, seed, args)}}


READ = {"start": start_row, "sweep": cell_metrics, "rounds": round_metrics}  # stage -> its rows from MLflow


def results(setting: str, args: argparse.Namespace) -> Results:
    """row ("start", a cell, ``iter<k>/<cell>``) -> seed -> metrics: what ``--saved`` holds of
    the seeds, and the rest from MLflow."""
    rows = joined(args.saved or [], setting, args)
    rows = {row: {seed: m for seed, m in by_seed.items() if seed in args.seeds} for row, by_seed in rows.items()}
    todo = {seed: to_run(setting, seed, args, rows) for seed in args.seeds}
    if not any(todo.values()):
        return rows
    from mlflow import MlflowClient

    client = MlflowClient(TRACKING)
    experiment = client.get_experiment_by_name("nsa-toy")
    if experiment is None:
        raise ToyError(f"no toy experiment in {TRACKING}; run without --table_only")
    for seed, stages_left in todo.items():
        for stage in stages_left:
            for row, by_seed in READ[stage](client, experiment.experiment_id, setting, seed, args).items():
                rows.setdefault(row, {}).update(by_seed)
    return rows


def joined(paths: list[Path], setting: str, args: argparse.Namespace) -> Results:
    """The results that earlier runs saved (their results.json), seeds joined: seeds run on
    other machines or in other sessions, at this evaluation's size."""
    rows: Results = {}
    for path in paths:
        if not path.is_file():
            raise ToyError(f"{path}: no such results file (a results.json that run.py saved)")
        by_row = json.loads(path.read_text()).get(setting, {}).get(label(args), {})
        for row, by_seed in by_row.items():
            rows.setdefault(row, {}).update({int(seed): metrics for seed, metrics in by_seed.items()})
    return rows


def saved(paths: list[Path], setting: str, args: argparse.Namespace) -> Results:
    """``--merge``: the saved results alone, every seed asked for in them."""
    rows = joined(paths, setting, args)
    missing = sorted(set(args.seeds) - set(rows.get("start", {})))
    if missing:
        raise ToyError(f"{setting} {label(args)}: no seed {missing} in {', '.join(map(str, paths))}")
    return rows


def report(args: argparse.Namespace) -> None:
    """Print each setting's tables, save them as JSON beside the picture, draw the picture."""
    found = {
        setting: (saved(args.merge, setting, args) if args.merge else results(setting, args), args.seeds)
        for setting in args.settings
    }
    for setting, (rows, seeds) in found.items():
        title = f"toy_nsa {setting} chains, {args.heldout} held-out problems x {args.samples}"
        print(table(rows, seeds, args.samples, title), end="\n\n")
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    figure(found, args.samples, args.figure)
    path = args.figure.with_suffix(".json")  # other settings and sizes already there are kept
    data = json.loads(path.read_text()) if path.exists() else {}
    for setting, (rows, _) in found.items():
        saving = {row: {str(s): m for s, m in by_seed.items()} for row, by_seed in rows.items()}
        data.setdefault(setting, {})[label(args)] = saving
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"toy_nsa: picture {args.figure}, results {args.figure.with_suffix('.json')}", file=sys.stderr)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="default: 2, to stay under 30 min")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["short"], help="chain lengths")
    parser.add_argument("--train", type=int, default=256, help="training problems per seed")
    parser.add_argument("--heldout", type=int, default=256, help="held-out problems (the same for every seed)")
    parser.add_argument("--samples", type=int, default=4, help="answers per held-out problem (avg@n, pass@n)")
    parser.add_argument("--pretrain_steps", type=int, default=900, help="SFT steps of the start policy")
    parser.add_argument(
        "--registered", action="store_true", help=f"only the {len(REGISTERED)} cells the comparisons read"
    )
    parser.add_argument("--iterations", type=int, default=1, help="rounds of nsa iterate of RFT, BCPG, BCPG-NSA")
    parser.add_argument("--figure", type=Path, default=ROOT / "results.png", help="the picture (and .json beside)")
    parser.add_argument("--table_only", action="store_true", help="print the tables of what has run; run nothing")
    joining = parser.add_mutually_exclusive_group()
    joining.add_argument(
        "--merge", type=Path, nargs="+", help="run nothing; the tables from these results.json files (seeds joined)"
    )
    joining.add_argument(
        "--saved",
        type=Path,
        nargs="+",
        help="results.json files of earlier runs: what they hold of a seed is not run again (its start "
        "policy's evaluation, the cells, the rounds) and is joined into the tables; with --iterations, "
        "only the rounds run",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse()
    try:
        if not (args.table_only or args.merge):
            run_all(args)
        report(args)
    except ToyError as err:
        print(f"toy_nsa: error: {err}", file=sys.stderr)
        sys.exit(2)


def run_all(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    for setting in args.settings:
        check_sizes(setting, args)
        have = joined(args.saved or [], setting, args)
        for seed in args.seeds:  # a seed at a time: a run stopped anywhere has whole seeds to report
            todo = to_run(setting, seed, args, have)
            if todo:  # a seed saved whole is not even pretrained
                prepare(setting, seed, args)
                check_learnt(setting, seed, args)
                run_seed(setting, seed, args, todo)
            print(f"toy_nsa: {setting} seed {seed} done at {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
