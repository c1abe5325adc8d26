"""``nsa evaluate``: benchmark accuracy of a policy, as avg@n and unbiased pass@k, tracked in MLflow.

Per benchmark: load its problems, sample n answers each with the recipe's sampler, verify
them with the benchmark's own verifier. Both are cached stages (``eval_sample``,
``eval_verify``), so a killed evaluation resumes and a second run of the same policy costs
nothing. The table is printed and logged to the MLflow run as metrics
(``eval/<benchmark>/pass_at_k``) and as a table artifact (``eval/results.json``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from nsa import pipeline, tables
from nsa.contracts import Benchmark, Sampler, closed_after, is_correct
from nsa.errors import NSAError
from nsa.stages.cache import StageOutput
from nsa.stages.problems import problems_output
from nsa.stages.rollouts import check_template
from nsa.team import Team, say


class Evaluation:
    """What ``nsa evaluate`` measures, and with which sampler.

    Args:
        benchmarks: the problem sets (MATH500, AIME24, AIME25, AMC23, GSM8K, LiveCodeBench, ...).
        sampler: draws the n answers per problem (n = its ``num_samples``); None: ``data.sampler``.
        policy: the model to evaluate; None: the trained policy in ``model.export_dir`` when it
            exists, else ``model.policy`` (the start model).
        pass_k: the k of pass@k, each at most n; None: 1 and n.
        shard_size: problems per committed shard of the sampling stage.
    """

    def __init__(
        self,
        benchmarks: list[Benchmark] | None = None,
        sampler: Sampler | None = None,
        policy: str | None = None,
        pass_k: list[int] | None = None,
        shard_size: int = 32,
    ) -> None:
        self.benchmarks = benchmarks or []
        self.sampler = sampler
        self.policy = policy
        self.pass_k = pass_k
        self.shard_size = shard_size


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct of n samples (Chen et al. 2021):
    1 - C(n - c, k) / C(n, k), as a product so large n does not overflow."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def benchmark_metrics(correct: list[int], n: int, ks: list[int]) -> dict[str, float]:
    """avg@n (mean share of correct samples), its standard error over problems, and pass@k, in
    percent. The error is the spread of the problems' shares over sqrt(problems): how far
    another draw of problems and answers would move avg@n (0 for a single problem)."""
    shares = [c / n for c in correct]
    metrics = {f"avg@{n}": 100.0 * statistics.fmean(shares)}
    spread = statistics.stdev(shares) if len(shares) > 1 else 0.0
    metrics[f"avg@{n}_se"] = 100.0 * spread / math.sqrt(len(shares))
    for k in ks:
        metrics[f"pass@{k}"] = 100.0 * sum(pass_at_k(n, c, k) for c in correct) / len(correct)
    return metrics


def correct_per_problem(verified: StageOutput) -> list[int]:
    """Correct answers (``is_correct``) per problem, in problem order."""
    counts: dict[str, int] = defaultdict(int)
    for group, reward in zip(verified.dataset["group"], verified.dataset["reward"]):
        counts[group] += is_correct(reward)
    return list(counts.values())


def choose_policy(evaluation: Evaluation, policy: str, export_dir: str | None) -> str:
    if evaluation.policy:
        return evaluation.policy
    if export_dir and (Path(export_dir) / "config.json").exists():
        return export_dir
    return policy


def check(evaluation: Evaluation, sampler: Sampler) -> list[int]:
    """The k of pass@k; a one-line error for a setting that cannot work, before any sampling."""
    if not evaluation.benchmarks:
        raise NSAError("evaluate.benchmarks is empty; name at least one, e.g. --evaluate.benchmarks+=MATH500")
    n = sampler.num_samples
    ks = evaluation.pass_k or sorted({1, n})
    if any(k < 1 or k > n for k in ks):
        raise NSAError(f"evaluate.pass_k {ks} must lie in 1..{n}, the sampler's num_samples")
    names = [b.name for b in evaluation.benchmarks]
    if len(set(names)) != len(names):
        raise NSAError(f"two benchmarks share a name in {names}; give one a different `name`")
    for number, benchmark in enumerate(evaluation.benchmarks):
        check_template(benchmark.prompt_template, f"evaluate.benchmarks[{number}] ({benchmark.name}) prompt_template")
    return ks


def load(benchmark: Benchmark) -> tuple[StageOutput, dict[str, str]]:
    """A benchmark's problems, without their references, and the references by problem id.

    The sampling stage copies a problem's columns into each of its n answers; code tests can
    be megabytes a problem, so they stay out of the stage and are looked up when verifying.
    """
    rows = benchmark.load()
    if not len(rows):
        raise NSAError(f"benchmark {benchmark.name} has no problems; check its source and limit")
    problems = problems_output(f"eval-{benchmark.name}", rows, getattr(benchmark, "source", ""))
    answers = dict(zip(rows["id"], rows["answer"]))
    problems.dataset = rows.remove_columns("answer").add_column("answer", [""] * len(rows))
    return problems, answers


def score(
    benchmark: Benchmark,
    loaded: tuple,
    sampler: Sampler,
    option: str,
    policy: str,
    cache_dir: str,
    shard: int,
    team: Team,
):
    """Sample and verify one benchmark (cached stages): its sampled and its verified answers.
    Questions whose prompt does not fit the sampler (``option``) are dropped and counted."""
    problems, answers = loaded
    sampled = pipeline.sample(
        problems,
        sampler,
        policy=policy,
        template=benchmark.prompt_template,
        cache_dir=cache_dir,
        shard_size=shard,
        team=team,
        name="eval_sample",
        option=option,
    )
    verified = pipeline.verify(
        sampled,
        benchmark.verifier(),
        rows=shard * sampler.num_samples,
        cache_dir=cache_dir,
        team=team,
        name="eval_verify",
        answers=answers,
    )
    return sampled, verified


def evaluate(
    evaluation: Evaluation, sampler: Sampler, policy: str, cache_dir: str, team: Team | None = None
) -> list[dict]:
    """One row per benchmark: its name, the problems scored and dropped (prompt too long), metrics and the share
    of answers cut off.
    ``team``: the processes that share the sampling and verifying (this one alone by default)."""
    team = team or Team.alone()
    ks = check(evaluation, sampler)
    pipeline.check_team(team, [sampler], cache_dir)
    say(team, f"nsa: evaluate: policy {policy}, {sampler.num_samples} answers per problem")
    loaded = [load(bench) for bench in evaluation.benchmarks]  # a bad file fails before any sampling
    option = "evaluate.sampler" if evaluation.sampler is not None else "data.sampler"
    rows = []
    with closed_after(sampler):  # one engine for every benchmark, gone at the end
        for bench, problems in zip(evaluation.benchmarks, loaded):
            sampled, verified = score(bench, problems, sampler, option, policy, cache_dir, evaluation.shard_size, team)
            correct = correct_per_problem(verified)
            truncated = 100.0 * sampled.stats["answers_truncated"] / max(1, len(sampled.dataset))
            metrics = {**benchmark_metrics(correct, sampler.num_samples, ks), "truncated%": truncated}
            dropped = int(sampled.stats.get("prompts_too_long", 0))  # warned of, with the fix, as they were dropped
            rows.append({"benchmark": bench.name, "problems": len(correct), "dropped": dropped, **metrics})
    return rows


# a row's columns that say what was scored; the others are metrics, averaged in the table's mean row
COVERAGE = ("benchmark", "problems", "dropped")


def format_table(rows: list[dict]) -> str:
    """A plain text table, one benchmark per line, and the mean of each metric."""
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    if len(rows) > 1:
        means = [_cell(sum(r[c] for r in rows) / len(rows)) for c in columns[len(COVERAGE) :]]
        cells.append(["mean", *[""] * (len(COVERAGE) - 1), *means])
    return tables.format_table(columns, cells)


def metric_name(column: str) -> str:
    """``pass@4`` -> ``pass_at_4``, ``truncated%`` -> ``truncated_pct``."""
    return column.replace("@", "_at_").replace("%", "_pct")


def _cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def log_results(logger, rows: list[dict], policy: str, config_text: str) -> None:
    """Metrics ``eval/<benchmark>/pass_at_4`` (MLflow names allow no ``@`` or ``%``), the table
    as ``eval/results.json`` and ``eval/results.txt``, the config."""
    metrics = {
        f"eval/{r['benchmark']}/{metric_name(k)}": float(v) for r in rows for k, v in r.items() if k != "benchmark"
    }
    logger.log_hyperparams({"eval/policy": policy})
    logger.log_metrics(metrics, step=0)
    table = {column: [row[column] for row in rows] for column in rows[0]}
    client, run_id = logger.experiment, logger.run_id
    client.log_table(run_id, data=table, artifact_file="eval/results.json")
    client.log_text(run_id, format_table(rows) + "\n", "eval/results.txt")
    client.log_text(run_id, config_text, "config.yaml")
    if "nsa.command" not in client.get_run(run_id).data.tags:  # an iteration's run keeps its own
        client.set_tag(run_id, "nsa.command", "evaluate")
