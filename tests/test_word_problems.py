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


def _solve(question: str) -> list[Fraction]:
    hits = [(pat, m) for pat in SOLVERS if (m := re.search(pat, question))]
    assert len(hits) == 1, f"expected exactly one solver to match: {question!r}"
    pat, m = hits[0]
    return SOLVERS[pat](*map(int, m.groups()))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines()]


def test_shipped_file_shape(rows):
    assert len(rows) >= 100
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["question"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "question", "answer"}
        assert isinstance(r["question"], str) and r["question"].strip()
        assert re.fullmatch(r"-?\d+", r["answer"]), r


def test_regeneration_is_byte_identical(tmp_path):
    out = tmp_path / "wp.jsonl"
    cmd = [sys.executable, str(SCRIPT), "--seed", "0", "--n", "120", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    assert out.read_bytes() == SHIPPED.read_bytes()


def test_answers_match_independent_recomputation(rows):
    used = set()
    for r in rows:
        steps = _solve(r["question"])
        assert all(s > 0 and s.denominator == 1 for s in steps), (r, steps)
        assert steps[-1] == int(r["answer"]), r
        used.add(next(p for p in SOLVERS if re.search(p, r["question"])))
    # Every template should be represented, otherwise a solver above is silently untested.
    assert used == set(SOLVERS)


def test_other_seeds_are_small_positive_and_correct():
    for p in gen.make_problems(seed=7, n=300):
        assert 0 < int(p["answer"]) < 1000, p
        assert _solve(p["question"])[-1] == int(p["answer"]), p


def test_seed_changes_problems_and_same_seed_repeats():
    a, b = gen.make_problems(0, 50), gen.make_problems(1, 50)
    assert gen.make_problems(0, 50) == a
    assert [p["question"] for p in a] != [p["question"] for p in b]
    assert len(a) == 50 and [p["id"] for p in a] == [f"wp-{i:04d}" for i in range(50)]
