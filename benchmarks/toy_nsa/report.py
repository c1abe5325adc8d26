"""The toy experiment's tables and picture, from its results: row -> seed -> MLflow metrics.

A row is ``start`` (the seed's start policy), a sweep cell (``bcpg``, ``nsa-0.5``, ...) or
``iter<k>/<cell>`` (that cell's method after k rounds of ``nsa iterate``) or ``round0`` (the
policy those rounds started from: the start policy, pretrained again when the sweep's rows were
saved on another machine, so not always bit for bit the same). Every difference
is paired by seed (see stats.py); the comparisons below were fixed before the runs they
report (README.md, "Pre-registered analysis").
"""

from __future__ import annotations

import statistics
from pathlib import Path

from stats import Paired, holm, paired

Results = dict[str, dict[int, dict[str, float]]]

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
COMPARISONS = [  # pre-registered, (label, cell, baseline cell): the first is the primary one
    ("BCPG-NSA - BCPG (primary)", "nsa-0.5", "bcpg"),
    ("BCPG-NSA - RFT", "nsa-0.5", "rft"),
    ("consensus - oracle alone", "nsa-0.5", "judge-oracle"),
    ("consensus - PRM-like alone", "nsa-0.5", "judge-prm"),
    ("consensus - LLM-like alone", "nsa-0.5", "judge-llm"),
    ("consensus - arithmetic alone", "nsa-0.5", "judge-arithmetic"),
]
# the cells the comparisons read: `run.py --registered` runs only these (GRPO-offline and beta 0
# and -0.5 are then left out of the tables)
REGISTERED = sorted({cell for _, compared, baseline in COMPARISONS for cell in (compared, baseline)})
ITERATED = [("RFT", "rft"), ("BCPG", "bcpg"), ("BCPG-NSA", "nsa-0.5")]  # (label, cell) run by nsa iterate
PER_SEED_COLUMNS = 5  # more seeds than this: no column of each seed's value


def keys(samples: int) -> tuple[str, str, str]:
    """The MLflow names of avg@n, its standard error and pass@n (percent, as nsa evaluate logs them)."""
    return f"eval/toy/avg_at_{samples}", f"eval/toy/avg_at_{samples}_se", f"eval/toy/pass_at_{samples}"


def has(results: Results, row: str, seeds: list[int]) -> bool:
    """Whether every seed has the row: the cells ``--registered`` leaves out have none, or one seed
    merged from a run of every cell."""
    return all(seed in results.get(row, {}) for seed in seeds)


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:5.1f}" if values else "    -"
    return f"{statistics.mean(values):5.1f} ± {statistics.stdev(values):4.1f}"


def column(results: Results, row: str, seeds: list[int], key: str) -> list[float]:
    return [results[row][seed][key] for seed in seeds]


def differences(results: Results, row: str, baseline: str, seeds: list[int], key: str) -> list[float]:
    """``row`` minus ``baseline``, seed by seed."""
    return [a - b for a, b in zip(column(results, row, seeds, key), column(results, baseline, seeds, key))]


def line(label: str, results: Results, row: str, seeds: list[int], samples: int, extra: str = "") -> str:
    """avg@n, its evaluation error (mean over seeds), its gain over the same seed's start
    policy, pass@n (mean ± std over seeds), and avg@n per seed when the seeds are few."""
    avg, se, pass_n = keys(samples)
    accuracy = column(results, row, seeds, avg)
    gain = differences(results, row, "start", seeds, avg)
    error = f"{statistics.fmean(column(results, row, seeds, se)):4.1f}" if se in results[row][seeds[0]] else "   -"
    each = " ".join(f"{a:5.1f}" for a in accuracy) if len(seeds) <= PER_SEED_COLUMNS else ""
    stats = (
        f"{mean_std(accuracy):>12} {error:>5} {mean_std(gain):>12} {mean_std(column(results, row, seeds, pass_n)):>12}"
    )
    return f"{label:<28} {stats}{extra}  {each}".rstrip()


def versus(results: Results, row: str, baseline: str, seeds: list[int], samples: int) -> str:
    """The paired difference in avg@n from ``baseline`` on the same seed: what a method adds to it."""
    return f"  {mean_std(differences(results, row, baseline, seeds, keys(samples)[0])):>12}"


def mined(results: Results, row: str, seeds: list[int]) -> str:
    """Percent of the negatives' tokens that the cell's consensus mines (the paper: 26M of 118M)."""
    runs = [results[row][seed] for seed in seeds]
    shares = [100 * run["data/tokens_correct/consensus"] / run["data/tokens_negative"] for run in runs]
    return f"  {mean_std(shares):>12}"


def header(seeds: list[int], samples: int, extra: str) -> str:
    each = f"  avg@{samples} of seeds {', '.join(map(str, seeds))}" if len(seeds) <= PER_SEED_COLUMNS else ""
    names = f"{'avg@' + str(samples) + ' %':>12} {'se':>5} {'gain':>12} {'pass@' + str(samples) + ' %':>12}"
    return f"{'':<28} {names}{extra}{each}"


def methods_table(results: Results, seeds: list[int], samples: int, title: str) -> list[str]:
    return [
        f"{title}: held-out accuracy, mean ± std over {len(seeds)} seeds (se: the evaluation's own",
        "standard error, mean over seeds; gain: over the seed's start policy; vs: avg minus that of",
        "the row named, on the same seed)",
        header(seeds, samples, f"  {'vs BCPG':>12}"),
        line("start policy (SFT)", results, "start", seeds, samples, f"  {'':>12}"),  # no vs: keeps the columns
        *(
            line(label, results, cell, seeds, samples, versus(results, cell, "bcpg", seeds, samples))
            for label, cell in METHODS
            if has(results, cell, seeds)
        ),
    ]


def judges_table(results: Results, seeds: list[int], samples: int) -> list[str]:
    return [
        "BCPG-NSA (beta=0.5), steps mined by:",
        header(seeds, samples, f"  {'mined %':>12}  {'vs consensus':>12}"),
        *(
            line(
                label,
                results,
                cell,
                seeds,
                samples,
                mined(results, cell, seeds) + versus(results, cell, "nsa-0.5", seeds, samples),
            )
            for label, cell in JUDGES
        ),
    ]


def shown_p(p: float) -> str:
    """A p-value to 3 decimals, and one under 0.0005 as ``<0.001``: never a p of 0.000."""
    return "<0.001" if p < 0.0005 else f"{p:.3f}"


def comparison_line(label: str, result: Paired, holm_p: float | None) -> str:
    low, high = result.interval
    adjusted = f"{shown_p(holm_p):>7}" if holm_p is not None else "      -"
    interval = f"[{low:+6.2f}, {high:+6.2f}]"
    return f"{label:<30} {result.n:>5} {result.mean:+7.2f}  {interval} {shown_p(result.p):>7} {adjusted}"


def comparisons(results: Results, seeds: list[int], samples: int) -> dict[str, Paired]:
    avg = keys(samples)[0]
    return {label: paired(differences(results, cell, base, seeds, avg)) for label, cell, base in COMPARISONS}


def comparisons_table(results: Results, seeds: list[int], samples: int) -> list[str]:
    """The pre-registered comparisons: the primary one alone, the other five Holm-adjusted together."""
    found = comparisons(results, seeds, samples)
    secondary = [label for label, _, _ in COMPARISONS[1:]]
    adjusted = dict(zip(secondary, holm([found[label].p for label in secondary])))
    return [
        f"Pre-registered comparisons, avg@{samples} points, paired by seed (95% t interval; p two-sided;",
        "p Holm: adjusted over the five secondary comparisons):",
        f"{'comparison':<30} {'seeds':>5} {'mean':>7}  {'95% interval':>16} {'p':>7} {'p Holm':>7}",
        *(comparison_line(label, result, adjusted.get(label)) for label, result in found.items()),
    ]


def is_round(row: str) -> bool:
    return row == "round0" or row.startswith("iter")


def rounds(results: Results, seeds: list[int]) -> list[int]:
    """The rounds of ``nsa iterate`` that every iterated cell has for every seed, with round0:
    rounds saved for some seeds only (a run still going) are not tabulated, as every difference
    is paired, and nor are rounds without the policy they started from."""
    found = {int(row.split("/")[0][4:]) for row in results if row.startswith("iter")}
    if not has(results, "round0", seeds):
        return []
    return [k for k in sorted(found) if all(has(results, f"iter{k}/{cell}", seeds) for _, cell in ITERATED)]


def seeds_with_rounds(results: Results) -> list[int]:
    """The seeds that every saved round row (round0 included) has."""
    return sorted(set.intersection(*(set(by_seed) for row, by_seed in results.items() if is_round(row))))


def iterations_table(results: Results, seeds: list[int], samples: int) -> list[str]:
    """Each round's gain over round 0 (the policy the rounds started from), and BCPG-NSA against
    BCPG and RFT, paired by seed; last, how far round 0 is from the sweep's start policy."""
    avg = keys(samples)[0]
    head = "  ".join(f"{label + ' gain':>12}" for label, _ in ITERATED)
    out = [
        f"After k rounds of nsa iterate (avg@{samples} points; gain over round 0, the policy the rounds started",
        "from; mean ± std over seeds; intervals 95% t):",
        f"{'round':<6} {head}  {'BCPG-NSA - BCPG':>26} {'p':>6}  {'BCPG-NSA - RFT':>26} {'p':>6}",
    ]
    for k in rounds(results, seeds):
        gains = "  ".join(
            f"{mean_std(differences(results, f'iter{k}/{cell}', 'round0', seeds, avg)):>12}" for _, cell in ITERATED
        )
        pairs = [
            paired(differences(results, f"iter{k}/nsa-0.5", f"iter{k}/{base}", seeds, avg)) for base in ("bcpg", "rft")
        ]
        shown = "  ".join(
            f"{p.mean:+6.2f} [{p.interval[0]:+6.2f}, {p.interval[1]:+6.2f}] {shown_p(p.p):>6}" for p in pairs
        )
        out.append(f"{k:<6} {gains}  {shown}")
    apart = differences(results, "round0", "start", seeds, avg)
    moved = sum(difference != 0 for difference in apart)
    out.append(
        f"round 0 - the sweep's start policy: {mean_std(apart)} ({moved} of {len(seeds)} seeds apart; "
        f"from {min(apart):+.2f} to {max(apart):+.2f})"
    )
    return out


def table(results: Results, seeds: list[int], samples: int, title: str = "toy_nsa") -> str:
    """Every table of one setting: methods, judges, the pre-registered comparisons, the rounds."""
    parts = [methods_table(results, seeds, samples, title), judges_table(results, seeds, samples)]
    if len(seeds) > 1:
        parts.append(comparisons_table(results, seeds, samples))
    if len(seeds) > 1 and rounds(results, seeds):
        parts.append(iterations_table(results, seeds, samples))
    elif len(seeds) > 1 and any(is_round(row) for row in results):
        parts.append([f"Rounds of nsa iterate: only seeds {seeds_with_rounds(results)} have them all; not tabulated"])
    return "\n\n".join("\n".join(part) for part in parts)


def figure(settings: dict[str, tuple[Results, list[int]]], samples: int, path: Path) -> None:
    """Per setting, each method's gain over the start policy with its 95% interval (and, when
    rounds of nsa iterate ran, the gain after each round): the README's picture."""
    from matplotlib.figure import Figure

    rows = [*METHODS, *((f"judge: {label.split(' (')[0]}", cell) for label, cell in JUDGES[:-1])]
    rows = [
        (label, cell) for label, cell in rows if all(has(results, cell, seeds) for results, seeds in settings.values())
    ]
    columns = 1 + any(rounds(results, seeds) for results, seeds in settings.values())
    figure = Figure(figsize=(6.5 * columns, 3.6 * len(settings)), layout="constrained")
    grid = figure.subplots(len(settings), columns, squeeze=False)
    for axes, (name, (results, seeds)) in zip(grid, settings.items()):
        gains = [paired(differences(results, cell, "start", seeds, keys(samples)[0])) for _, cell in rows]
        axes[0].barh(
            [label for label, _ in rows][::-1],
            [g.mean for g in gains][::-1],
            xerr=[g.half_width for g in gains][::-1],
            color="tab:blue",
            capsize=3,
        )
        axes[0].set_title(f"{name}: avg@{samples} gain over the start policy ({len(seeds)} seeds, 95% CI)")
        axes[0].axvline(0, color="black", linewidth=0.5)
        primary = paired(differences(results, "nsa-0.5", "bcpg", seeds, keys(samples)[0]))
        low, high = primary.interval
        shown = f"{primary.mean:+.2f} [{low:+.2f}, {high:+.2f}], p {shown_p(primary.p)}"
        axes[0].set_xlabel(f"points; BCPG-NSA - BCPG {shown}")
        if columns > 1:
            plot_rounds(axes[1], results, seeds, samples, name)
    figure.savefig(path, dpi=110)


def plot_rounds(axes, results: Results, seeds: list[int], samples: int, name: str) -> None:
    """Each iterated method's gain after round k over round 0, the policy the rounds started from."""
    ks = rounds(results, seeds)
    if not ks:  # an empty panel, not a lone point at round 0
        axes.set_axis_off()
        axes.text(0.5, 0.5, f"{name}: no rounds of nsa iterate", ha="center", va="center", transform=axes.transAxes)
        return
    for label, cell in ITERATED:
        gains = [paired(differences(results, f"iter{k}/{cell}", "round0", seeds, keys(samples)[0])) for k in ks]
        means, errors = [0.0] + [g.mean for g in gains], [0.0] + [g.half_width for g in gains]
        axes.errorbar([0, *ks], means, yerr=errors, label=label, capsize=3, marker="o")
    axes.set_title(f"{name}: gain after k rounds of nsa iterate")
    axes.set_xticks([0, *ks])
    axes.legend()
