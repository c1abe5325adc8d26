"""Checks on the shipped word-problem set and the generator that writes it."""

import importlib.util
import json
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
SHIPPED = DATA / "word_problems.jsonl"
EASY_SHIPPED = DATA / "easy_word_problems.jsonl"
SCRIPT = DATA / "make_word_problems.py"


def _load_generator():
    # data/ is not a package, so load the script by path like any other caller would.
    spec = importlib.util.spec_from_file_location("make_word_problems", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()

# Independent solvers: each parses the numbers back out of the question text and returns every
# intermediate value and the answer last, so a template bug that the generator's own arithmetic
# would repeat still shows up here.
F = Fraction
SOLVERS = {
    r"has (\d+) boxes with (\d+) \w+ each\. \w+ gives away (\d+) ": lambda a, b, c: [F(a * b), F(a * b - c)],
    r"buys (\d+) packs of \w+ with (\d+) \w+ in each pack\. \w+ shares them equally among (\d+) friends": lambda a, b, c: [
        F(a * b),
        F(a * b, c),
    ],
    r"buys (\d+) copies of a [\w ]+ that cost \$(\d+) each and pays with a \$(\d+) bill": lambda a, b, c: [
        F(a * b),
        F(c - a * b),
    ],
    r"has (\d+) rows with (\d+) chairs in each row\. (\d+) more chairs": lambda a, b, c: [
        F(a * b),
        F(a * b + c),
    ],
    r"saves \$(\d+) every week for (\d+) weeks, then spends \$(\d+) ": lambda a, b, c: [
        F(a * b),
        F(a * b - c),
    ],
    r"reads (\d+) pages on Monday and twice as many pages on Tuesday\. The book has (\d+) pages": lambda a, b: [
        F(2 * a),
        F(3 * a),
        F(b - 3 * a),
    ],
    r"bakes (\d+) trays of muffins with (\d+) muffins on each tray\. \w+ eats (\d+) .* bags of (\d+)\.": lambda a, b, c, d: [
        F(a * b),
        F(a * b - c),
        F(a * b - c, d),
    ],
    r"has (\d+) \w+\. \w+ has (\d+) more \w+ than \w+\. How many \w+ do they have together": lambda a, b: [
        F(a + b),
        F(a + a + b),
    ],
    r"starts with (\d+) passengers\. At the first stop (\d+) people get off and (\d+) get on\. "
    r"At the second stop (\d+) people": lambda a, b, c, d: [F(a - b), F(a - b + c), F(a - b + c - d)],
    r"(\d+) friends order (\d+) pizzas that cost \$(\d+) each\. They split the bill equally": lambda a, b, c: [
        F(b * c),
        F(b * c, a),
    ],
    r"packs (\d+) boxes every hour and works (\d+) hours a day\. How many boxes does it pack in (\d+) days": lambda a, b, c: [
        F(a * b),
        F(a * b * c),
    ],
}


# One-step (easy level) templates: the single step is the answer.
EASY_SOLVERS = {
    r"^\w+ has (\d+) \w+ and buys (\d+) more\. How many \w+ does \w+ have now\?$": lambda a, b: [F(a + b)],
    r"^\w+ has (\d+) \w+\. \w+ gives \w+ (\d+) more \w+\. How many \w+ does \w+ have now\?$": lambda a, b: [F(a + b)],
    r"^\w+ has (\d+) \w+ and gives away (\d+)\. How many \w+ are left\?$": lambda a, b: [F(a - b)],
    r"^\w+ had (\d+) \w+ and lost (\d+) of them\. How many \w+ does \w+ have now\?$": lambda a, b: [F(a - b)],
    r"^\w+ has (\d+) bags with (\d+) \w+ in each bag\. How many \w+ does \w+ have\?$": lambda a, b: [F(a * b)],
    r"^\w+ buys (\d+) packs of \w+\. Each pack has (\d+) \w+\. How many \w+ does \w+ buy\?$": lambda a, b: [F(a * b)],
    r"^\w+ shares (\d+) \w+ equally among (\d+) friends\. How many \w+ does each friend get\?$": lambda a, b: [F(a, b)],
    r"^\w+ puts (\d+) \w+ into boxes of (\d+)\. How many boxes does \w+ fill\?$": lambda a, b: [F(a, b)],
}

# level -> (shipped file, id prefix, solvers, largest allowed answer)
LEVELS = {
    "multi": (SHIPPED, "wp", SOLVERS, 999),
    "easy": (EASY_SHIPPED, "easy", EASY_SOLVERS, 499),
}


def _solve(question: str, solvers: dict = SOLVERS) -> list[Fraction]:
    hits = [(pat, m) for pat in solvers if (m := re.search(pat, question))]
    assert len(hits) == 1, f"expected exactly one solver to match: {question!r}"
    pat, m = hits[0]
    return solvers[pat](*map(int, m.groups()))


@pytest.fixture(scope="module", params=sorted(LEVELS))
def level(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def rows(level) -> list[dict]:
    return [json.loads(line) for line in LEVELS[level][0].read_text(encoding="utf-8").splitlines()]


def test_shipped_file_shape(rows, level):
    assert len(rows) >= 100
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["question"] for r in rows}) == len(rows)
    assert [r["id"] for r in rows] == [f"{LEVELS[level][1]}-{i:04d}" for i in range(len(rows))]
    for r in rows:
        assert set(r) == {"id", "question", "answer"}
        assert isinstance(r["question"], str) and r["question"].strip()
        assert re.fullmatch(r"-?\d+", r["answer"]), r


@pytest.mark.parametrize(
    ("shipped", "level_args"),
    [
        # The original command, without --level, must keep writing the multi-step file unchanged.
        (SHIPPED, []),
        (SHIPPED, ["--level", "multi"]),
        (EASY_SHIPPED, ["--level", "easy"]),
    ],
)
@pytest.mark.multiprocess
def test_regeneration_is_byte_identical(tmp_path, shipped, level_args):
    out = tmp_path / "wp.jsonl"
    cmd = [sys.executable, str(SCRIPT), *level_args, "--seed", "0", "--n", "120", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    assert out.read_bytes() == shipped.read_bytes()


def test_answers_match_independent_recomputation(rows, level):
    solvers = LEVELS[level][2]
    used = set()
    for r in rows:
        steps = _solve(r["question"], solvers)
        assert all(s > 0 and s.denominator == 1 for s in steps), (r, steps)
        assert steps[-1] == int(r["answer"]), r
        used.add(next(p for p in solvers if re.search(p, r["question"])))
    # Every template should be represented, otherwise a solver above is silently untested.
    assert used == set(solvers)


def test_other_seeds_are_small_positive_and_correct(level):
    _, _, solvers, max_answer = LEVELS[level]
    for p in gen.make_problems(seed=7, n=300, level=level):
        assert 0 < int(p["answer"]) <= max_answer, p
        assert _solve(p["question"], solvers)[-1] == int(p["answer"]), p


def test_easy_problems_are_one_step_on_small_numbers():
    for p in gen.make_problems(seed=3, n=300, level="easy"):
        assert len(_solve(p["question"], EASY_SOLVERS)) == 1, p
        # Addends, factors, divisors and quotients stay around 2-20; only minuends and dividends grow.
        assert all(1 <= int(x) <= 100 for x in re.findall(r"\d+", p["question"])), p


def test_seed_changes_problems_and_same_seed_repeats(level):
    prefix = LEVELS[level][1]
    a, b = gen.make_problems(0, 50, level=level), gen.make_problems(1, 50, level=level)
    assert gen.make_problems(0, 50, level=level) == a
    assert [p["question"] for p in a] != [p["question"] for p in b]
    assert len(a) == 50 and [p["id"] for p in a] == [f"{prefix}-{i:04d}" for i in range(50)]


def test_default_level_is_multi():
    assert gen.make_problems(0, 20) == gen.make_problems(0, 20, level="multi")
