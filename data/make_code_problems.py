"""Generate data/code_problems.jsonl: 24 easy stdin/stdout programming problems for recipes/code.yaml.

Stdlib only, so the file can be rebuilt anywhere the repo is checked out:

    python data/make_code_problems.py --out data/code_problems.jsonl

Each problem is written here with a reference solution; the expected outputs are what that solution prints
on each test input (run in a fresh ``python -I``), so they cannot disagree with it. There is no randomness:
the output is byte-for-byte the same on every run. Each row's ``answer`` is CodeVerifier's reference,
``{"tests": [{"input": ..., "output": ...}, ...]}``, and its question shows the first test as the example.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple


class Problem(NamedTuple):
    title: str
    statement: str
    input_spec: str
    output_spec: str
    inputs: list[str]  # stdin of each test; the first is shown in the question as the example
    solution: str  # a reference program: it prints each test's expected output


PROBLEMS = [
    Problem(
        "Sum",
        "Read two integers a and b and print their sum a + b.",
        "One line with a and b separated by a space (-1000 <= a, b <= 1000).",
        "One integer: a + b.",
        ["1 2\n", "-5 5\n", "100 250\n", "-7 -8\n"],
        "a, b = map(int, input().split())\nprint(a + b)",
    ),
    Problem(
        "Difference",
        "Read two integers a and b and print a - b.",
        "One line with a and b separated by a space (-1000 <= a, b <= 1000).",
        "One integer: a - b.",
        ["5 3\n", "3 5\n", "-4 -10\n", "0 0\n"],
        "a, b = map(int, input().split())\nprint(a - b)",
    ),
    Problem(
        "Product",
        "Read two integers a and b and print their product.",
        "One line with a and b separated by a space (-1000 <= a, b <= 1000).",
        "One integer: a * b.",
        ["3 4\n", "-2 8\n", "0 99\n", "1000 1000\n"],
        "a, b = map(int, input().split())\nprint(a * b)",
    ),
    Problem(
        "Largest number",
        "Given n integers, print the largest of them.",
        "The first line holds n (1 <= n <= 100); the second line holds n integers separated by spaces.",
        "One integer: the largest value.",
        ["3\n1 5 2\n", "1\n-7\n", "5\n-1 -2 -3 -4 -5\n", "4\n10 10 9 10\n"],
        "input()\nprint(max(map(int, input().split())))",
    ),
    Problem(
        "Smallest number",
        "Given n integers, print the smallest of them.",
        "The first line holds n (1 <= n <= 100); the second line holds n integers separated by spaces.",
        "One integer: the smallest value.",
        ["3\n4 2 8\n", "1\n42\n", "4\n-3 0 3 -3\n"],
        "input()\nprint(min(map(int, input().split())))",
    ),
    Problem(
        "Sum of a list",
        "Given n integers, print their sum.",
        "The first line holds n (1 <= n <= 100); the second line holds n integers separated by spaces.",
        "One integer: the sum.",
        ["3\n1 2 3\n", "1\n-5\n", "5\n10 -10 20 -20 7\n"],
        "input()\nprint(sum(map(int, input().split())))",
    ),
    Problem(
        "Reverse a string",
        "Read a word and print it reversed.",
        "One line with a word of 1 to 100 lowercase letters.",
        "The word reversed.",
        ["hello\n", "a\n", "racecar\n", "abc\n"],
        "print(input().strip()[::-1])",
    ),
    Problem(
        "Count vowels",
        "Read a word and print how many of its letters are vowels (a, e, i, o, u).",
        "One line with a word of 1 to 100 lowercase letters.",
        "One integer: the number of vowels.",
        ["hello\n", "rhythm\n", "aeiou\n", "banana\n"],
        "print(sum(c in 'aeiou' for c in input().strip()))",
    ),
    Problem(
        "Palindrome",
        "Read a word and print YES if it reads the same backwards, otherwise NO.",
        "One line with a word of 1 to 100 lowercase letters.",
        "YES or NO.",
        ["level\n", "hello\n", "a\n", "abba\n", "ab\n"],
        "s = input().strip()\nprint('YES' if s == s[::-1] else 'NO')",
    ),
    Problem(
        "Factorial",
        "Read n and print n! (the product 1 * 2 * ... * n; 0! is 1).",
        "One integer n (0 <= n <= 20).",
        "One integer: n!.",
        ["5\n", "0\n", "1\n", "20\n"],
        "import math\nprint(math.factorial(int(input())))",
    ),
    Problem(
        "Fibonacci",
        "The Fibonacci numbers are F(0) = 0, F(1) = 1 and F(n) = F(n-1) + F(n-2). Read n and print F(n).",
        "One integer n (0 <= n <= 80).",
        "One integer: F(n).",
        ["0\n", "1\n", "10\n", "80\n"],
        "n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)",
    ),
    Problem(
        "Even or odd",
        "Read an integer and print EVEN if it is even, otherwise ODD.",
        "One integer n (-10^9 <= n <= 10^9).",
        "EVEN or ODD.",
        ["4\n", "7\n", "0\n", "-3\n"],
        "print('EVEN' if int(input()) % 2 == 0 else 'ODD')",
    ),
    Problem(
        "Digit sum",
        "Read a non-negative integer and print the sum of its decimal digits.",
        "One integer n (0 <= n <= 10^18).",
        "One integer: the sum of the digits of n.",
        ["123\n", "0\n", "999999999999999999\n", "1000\n"],
        "print(sum(int(d) for d in input().strip()))",
    ),
    Problem(
        "Count words",
        "Read a line of text and print how many words it has (words are separated by one or more spaces).",
        "One line of text with at most 200 characters.",
        "One integer: the number of words.",
        ["hello world\n", "one\n", "a  b   c\n", "the quick brown fox jumps\n"],
        "print(len(input().split()))",
    ),
    Problem(
        "Upper case",
        "Read a line of lowercase letters and spaces and print it in upper case.",
        "One line with at most 100 characters.",
        "The same line in upper case.",
        ["hello\n", "hello world\n", "abc xyz\n"],
        "print(input().upper())",
    ),
    Problem(
        "Count up",
        "Read n and print the numbers 1 to n, one per line.",
        "One integer n (1 <= n <= 100).",
        "n lines: 1, 2, ..., n.",
        ["3\n", "1\n", "10\n"],
        "for i in range(1, int(input()) + 1):\n    print(i)",
    ),
    Problem(
        "Greatest common divisor",
        "Read two positive integers and print their greatest common divisor.",
        "One line with a and b (1 <= a, b <= 10^9).",
        "One integer: gcd(a, b).",
        ["12 18\n", "7 13\n", "100 10\n", "1000000000 999999999\n"],
        "import math\na, b = map(int, input().split())\nprint(math.gcd(a, b))",
    ),
    Problem(
        "Prime test",
        "Read an integer n and print YES if n is prime, otherwise NO.",
        "One integer n (1 <= n <= 10^6).",
        "YES or NO.",
        ["2\n", "1\n", "9\n", "97\n", "999983\n"],
        "n = int(input())\nprint('YES' if n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1)) else 'NO')",
    ),
    Problem(
        "Sort numbers",
        "Given n integers, print them in increasing order.",
        "The first line holds n (1 <= n <= 100); the second line holds n integers separated by spaces.",
        "The n integers in increasing order, separated by spaces.",
        ["3\n3 1 2\n", "1\n5\n", "5\n5 -1 3 -1 0\n"],
        "input()\nprint(*sorted(map(int, input().split())))",
    ),
    Problem(
        "Count even numbers",
        "Given n integers, print how many of them are even.",
        "The first line holds n (1 <= n <= 100); the second line holds n integers separated by spaces.",
        "One integer: the count of even numbers.",
        ["4\n1 2 3 4\n", "3\n1 3 5\n", "3\n0 -2 7\n"],
        "input()\nprint(sum(int(x) % 2 == 0 for x in input().split()))",
    ),
    Problem(
        "Integer average",
        "Given n non-negative integers, print their average rounded down to an integer.",
        "The first line holds n (1 <= n <= 100); the second line holds n integers from 0 to 1000.",
        "One integer: the sum divided by n, rounded down.",
        ["3\n1 2 3\n", "2\n1 2\n", "4\n10 0 0 0\n"],
        "n = int(input())\nprint(sum(map(int, input().split())) // n)",
    ),
    Problem(
        "Celsius to Fahrenheit",
        (
            "Read a temperature C in degrees Celsius (a multiple of 5) and print it in degrees Fahrenheit, F = C * 9 / "
            "5 + 32."
        ),
        "One integer C (-100 <= C <= 100, a multiple of 5).",
        "One integer: F.",
        ["0\n", "100\n", "-40\n", "25\n"],
        "c = int(input())\nprint(c * 9 // 5 + 32)",
    ),
    Problem(
        "Multiplication table",
        "Read n and print its multiplication table from 1 to 5, one line per row in the form `n x i = p`.",
        "One integer n (1 <= n <= 100).",
        "Five lines, `n x 1 = n` to `n x 5 = 5n`.",
        ["2\n", "7\n", "10\n"],
        "n = int(input())\nfor i in range(1, 6):\n    print(f'{n} x {i} = {n * i}')",
    ),
    Problem(
        "Count a letter",
        "Read a word and a letter and print how many times the letter occurs in the word.",
        "The first line holds a word of 1 to 100 lowercase letters; the second line holds one lowercase letter.",
        "One integer: the number of occurrences.",
        ["banana\na\n", "hello\nz\n", "mississippi\ns\n"],
        "word = input().strip()\nletter = input().strip()\nprint(word.count(letter))",
    ),
]


def expected_output(solution: str, given: str) -> str:
    """What the reference solution prints on ``given``; an error here is a bug in the solution."""
    # -I: no user site or PYTHON* variables, so the output depends on the program alone.
    done = subprocess.run([sys.executable, "-I", "-c", solution], input=given, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"reference solution failed on {given!r}: {done.stderr.strip()}")
    return done.stdout


def make_problems() -> list[dict[str, str]]:
    """Return the problems as {"id", "question", "answer"} dicts, ids code-0000 onwards."""
    rows = []
    for number, problem in enumerate(PROBLEMS):
        tests = [{"input": given, "output": expected_output(problem.solution, given)} for given in problem.inputs]
        example_in, example_out = tests[0]["input"], tests[0]["output"]
        question = (
            f"{problem.title}\n\n{problem.statement}\n\nInput: {problem.input_spec}\nOutput: {problem.output_spec}\n\n"
            f"Example input:\n{example_in}\nExample output:\n{example_out}"
        ).rstrip()
        # The same JSON as nsa.plugins.verifiers.code.reference_json, without importing nsa.
        rows.append({"id": f"code-{number:04d}", "question": question, "answer": json.dumps({"tests": tests})})
    return rows


def to_jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("code_problems.jsonl"))
    args = parser.parse_args(argv)
    # newline="" keeps "\n" line endings on every platform, so the file is byte-identical.
    with args.out.open("w", encoding="utf-8", newline="") as fh:
        fh.write(to_jsonl(make_problems()))


if __name__ == "__main__":
    main()
