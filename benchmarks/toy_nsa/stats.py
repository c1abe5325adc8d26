"""The toy experiment's statistics: paired differences by seed, their intervals and p-values,
and the number of seeds a wanted interval needs.

A comparison of methods A and B is the per-seed difference d_s = avg(A, s) - avg(B, s): both
trained from the same start policy on the same rollouts and evaluated on the same held-out
problems, so what varies between seeds (the start policy, the problems, the rollouts) cancels
out of d_s as far as it affects A and B alike. With n seeds, mean d and sample deviation s_d:

    95% interval   d ± t(0.975, n - 1) * s_d / sqrt(n)
    p-value        two-sided, of t = d / (s_d / sqrt(n)) with n - 1 degrees of freedom

    python benchmarks/toy_nsa/stats.py 0.3 -0.2 0.0 0.9 2.2    # the seeds needed for ±0.5
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t


@dataclass(frozen=True)
class Paired:
    """One paired comparison over n seeds, in points of avg@n."""

    n: int
    mean: float
    half_width: float  # of the 95% interval; inf for one seed
    p: float  # two-sided; 1.0 when every difference is 0, nan for one seed

    @property
    def interval(self) -> tuple[float, float]:
        return self.mean - self.half_width, self.mean + self.half_width


def paired(differences: list[float], confidence: float = 0.95) -> Paired:
    """The paired t interval and p-value of the mean difference."""
    n, mean = len(differences), statistics.fmean(differences)
    if n < 2:
        return Paired(n, mean, math.inf, math.nan)
    se = statistics.stdev(differences) / math.sqrt(n)
    half = student_t.ppf(0.5 + confidence / 2, n - 1) * se
    if se == 0:
        return Paired(n, mean, 0.0, 1.0 if mean == 0 else 0.0)
    return Paired(n, mean, half, 2 * student_t.sf(abs(mean) / se, n - 1))


def seeds_needed(sd: float, half_width: float, confidence: float = 0.95, most: int = 1000) -> int:
    """The fewest seeds n whose interval t(n - 1) * sd / sqrt(n) is at most ``half_width``, for
    paired differences spread like ``sd``."""
    for n in range(2, most + 1):
        if student_t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n) <= half_width:
            return n
    raise ValueError(f"no n <= {most} gives a half-width of {half_width} at sd {sd}")


def power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """The chance that a paired t test over n seeds finds an ``effect`` of this size at
    ``alpha`` (two-sided), from the noncentral t distribution."""
    from scipy.stats import nct

    critical, shift = student_t.ppf(1 - alpha / 2, n - 1), effect / (sd / math.sqrt(n))
    return float(nct.sf(critical, n - 1, shift) + nct.cdf(-critical, n - 1, shift))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment: the family's chance of any false finding stays at alpha."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def main() -> None:
    parser = argparse.ArgumentParser(description="The seeds needed for a paired interval of a wanted half-width.")
    parser.add_argument("differences", type=float, nargs="+", help="a pilot's per-seed differences, in points")
    parser.add_argument("--half_width", type=float, default=0.5, help="the wanted 95%% half-width, in points")
    args = parser.parse_args()
    pilot, sd = paired(args.differences), statistics.stdev(args.differences)
    n = seeds_needed(sd, args.half_width)
    print(f"pilot: {pilot.n} seeds, mean {pilot.mean:+.2f} ± {pilot.half_width:.2f}, p {pilot.p:.3f}, sd {sd:.2f}")
    print(
        f"seeds for a half-width of {args.half_width}: {n}; power to find {pilot.mean:+.2f} with them: "
        f"{power(pilot.mean, sd, n):.2f}"
    )


if __name__ == "__main__":
    main()
