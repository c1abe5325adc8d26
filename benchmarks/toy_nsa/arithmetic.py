"""The toy task: seeded chains of arithmetic, and noisy worked solutions to pretrain on.

A problem is a start value and 3 to 6 operations applied left to right (7 to 10 in the
``long`` setting, written in a labelled format, see ``SETTINGS`` and ``step``)::

    question: 3 +4 -5 *3
    solution: 3 +4 = 7 | -5 *3      <- one step per operation, blank lines between (the
                                       ParagraphSegmenter's steps); after the bar, the
              7 -5 = 2 | *3            operations still to do, so that the next one is
                                       always right after the last bar, an easy thing for
              2 *3 = \\boxed{6}        a tiny model to find; the last step boxes the answer

Every intermediate value is a digit, 1..9, so each step is one of about a hundred small
facts that a tiny model learns in minutes on a CPU. The pretraining solutions are noisy on
purpose, so that the pretrained policy makes the kind of mistakes negative sample
augmentation is about: with ``p_error`` a step writes a wrong result (off by 1 or 2); with
``p_fix`` the next step notices and corrects it (``wait, 7 -5 = 2 | *3``) and the chain
goes on from the right value; otherwise the chain goes on from the wrong value, with correct
arithmetic, to a wrong answer. A slip in the last step is never corrected: math-verify reads
two boxed answers that are close together, or joined by a comma like the one in ``wait,``,
as a set, which is never right. So a wrong answer's steps before its first slip are right,
and a right answer may hold a corrected slip.

The held-out problems are one fixed stream; training problems and pretraining chains never
repeat a held-out question. Stdlib only: ``python benchmarks/toy_nsa/arithmetic.py --seed 0
--out DIR`` writes the problem files.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

MAX_VALUE = 9
LABELS = "ABCDEFGHIJKL"  # the labelled format's operation names, in order


@dataclass(frozen=True)
class Setting:
    """How long the chains are and where the pretraining solutions slip (see ``slip_rate``)."""

    name: str
    min_ops: int
    max_ops: int
    p_error: float  # slips per step, on average over a chain
    late: float
    max_new_tokens: int  # room for the longest solution with a few corrections
    positions: int  # the policy's context: a question and the longest solution
    labelled: bool = False  # the labelled format (see ``step``) instead of the list still to do
    hidden: int = 64  # the start policy's width (pretrain.py)


SETTINGS = {
    # 3 to 6 operations, a slip equally likely at every step: most wrong answers go wrong early
    "short": Setting("short", 3, 6, p_error=0.1, late=0.0, max_new_tokens=160, positions=256),
    # the paper's regime: 7 to 10 operations, slips four times likelier at the last step than at
    # the first, so that wrong answers carry long right prefixes. Labelled steps: with the
    # list still to do, the 2-layer policy did not learn to copy 7-10 operations (loss 0.32
    # after 900 steps, no right step in any negative)
    "long": Setting(
        "long", 7, 10, p_error=0.08, late=0.6, max_new_tokens=224, positions=320, labelled=True, hidden=128
    ),
}


def slip_rate(p_error: float, late: float, k: int, n: int) -> float:
    """Step k (0-based) of n slips with ``p_error * (1 + late * (2 k / (n - 1) - 1))``: on
    average over the chain ``p_error``, from ``(1 - late) p_error`` at the first step to
    ``(1 + late) p_error`` at the last."""
    tilt = 2 * k / (n - 1) - 1 if n > 1 else 0.0
    return p_error * (1 + late * tilt)


def apply(value: int, op: str, arg: int) -> int:
    return {"+": value + arg, "-": value - arg, "*": value * arg}[op]


OPERATIONS = [("+", a) for a in range(2, 10)] + [("-", a) for a in range(2, 10)] + [("*", a) for a in (2, 3)]


def feasible(value: int) -> list[tuple[str, int]]:
    """Every operation that keeps the chain inside 1..MAX_VALUE."""
    return [(op, a) for op, a in OPERATIONS if 1 <= apply(value, op, a) <= MAX_VALUE]


def make_problem(rng: random.Random, index: int, prefix: str, setting: Setting = SETTINGS["short"]) -> dict:
    """One chain of the setting's length: {id, question, answer, start, ops}."""
    value = rng.randint(2, MAX_VALUE)
    start, ops = value, []
    for _ in range(rng.randint(setting.min_ops, setting.max_ops)):
        kinds = sorted({op for op, _ in feasible(value)})
        kind = rng.choice(kinds)  # each kind equally likely, then its argument
        op, arg = rng.choice([(o, a) for o, a in feasible(value) if o == kind])
        ops.append((op, arg))
        value = apply(value, op, arg)
    names = LABELS if setting.labelled else [""] * len(ops)
    question = " ".join([str(start), *(f"{name}{op}{arg}" for name, (op, arg) in zip(names, ops))])
    return {"id": f"{prefix}-{index:05d}", "question": question, "answer": str(value), "start": start, "ops": ops}


def wrong(rng: random.Random, right: int) -> int:
    """A plausible slip: off by 1 or 2, positive where it can be (after an earlier slip the
    chain may have left 1..9)."""
    slips = [right + d for d in (-2, -1, 1, 2)]
    return rng.choice([r for r in slips if r >= 1] or slips)


def solution(
    problem: dict, rng: random.Random, p_error: float, p_fix: float, setting: Setting = SETTINGS["short"]
) -> str:
    """A worked solution with slips at rate ``p_error`` (tilted by the setting's ``late``),
    each corrected at rate ``p_fix``, in the setting's format."""
    value, steps, ops = problem["start"], [], problem["ops"]
    for k, (op, arg) in enumerate(ops):
        right, rest = apply(value, op, arg), " ".join(f"{o}{a}" for o, a in ops[k + 1 :])
        name = LABELS[k] if setting.labelled else ""
        written = wrong(rng, right) if rng.random() < slip_rate(p_error, setting.late, k, len(ops)) else right
        steps.append(step(value, op, arg, written, rest, name))
        if written != right and rest and rng.random() < p_fix:
            steps.append("wait, " + step(value, op, arg, right, rest, name))
            written = right
        value = written
    return "\n\n".join(steps)


def step(value: int, op: str, arg: int, result: int, rest: str, name: str = "") -> str:
    """``12 *3 = 36 | -4``: the operation, its result, and the operations still to do. Labelled
    (``name`` given): ``C*3: 12 *3 = 36``, the operation as the question names it (``3 A+4 B-5
    C*3``), then the step: the next operation is what follows its name in the question, which a
    2-layer model finds in one look back (an induction head), without copying the list."""
    if name:
        return f"{name}{op}{arg}: {value} {op}{arg} = " + (f"{result}" if rest else f"\\boxed{{{result}}}")
    if not rest:
        return f"{value} {op}{arg} = \\boxed{{{result}}}"
    return f"{value} {op}{arg} = {result} | {rest}"


def problems(
    seed: int,
    n: int,
    prefix: str,
    exclude: frozenset[str] = frozenset(),
    unique: bool = True,
    setting: Setting = SETTINGS["short"],
) -> list[dict]:
    """``n`` chains from the stream ``(prefix, seed)`` (the short setting's streams keep their
    old names), none of whose questions is in ``exclude`` (and, when ``unique``, no question
    twice). The space is small (a few thousand chains of 3 operations), so the held-out set
    must be excluded explicitly, not left to chance."""
    stream = f"{prefix}:{seed}" if setting.name == "short" else f"{setting.name}:{prefix}:{seed}"
    rng, rows, seen = random.Random(stream), [], set(exclude)
    for _ in range(100 * n):
        if len(rows) == n:
            break
        row = make_problem(rng, len(rows), prefix, setting)
        if row["question"] not in seen:
            rows.append(row)
            seen.update([row["question"]] if unique else [])
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} distinct {prefix} chains found; ask for fewer than {n}")
    return rows


def heldout(n: int, setting: Setting = SETTINGS["short"]) -> list[dict]:
    """The held-out problems: one fixed stream, the same for every seed."""
    return problems(0, n, "heldout", setting=setting)


def train(seed: int, n: int, held_out: list[dict], setting: Setting = SETTINGS["short"]) -> list[dict]:
    """Seed ``seed``'s training problems, none of them held out."""
    return problems(seed, n, "train", exclude=frozenset(row["question"] for row in held_out), setting=setting)


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = ("id", "question", "answer")
    path.write_text("".join(json.dumps({k: r[k] for k in keep}) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="the training problems' seed (the held-out set is fixed)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=256, help="problems the methods train on")
    parser.add_argument("--heldout", type=int, default=256, help="problems the policies are evaluated on")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="short", help="chain lengths (see SETTINGS)")
    args = parser.parse_args()
    setting = SETTINGS[args.setting]
    held_out = heldout(args.heldout, setting)
    write_jsonl(train(args.seed, args.train, held_out, setting), args.out / "train.jsonl")
    write_jsonl(held_out, args.out / "heldout.jsonl")


if __name__ == "__main__":
    main()
