"""LiveCodeBench on a small local copy of its hub layout (tests/data/benchmarks/livecodebench.jsonl).

The copy has four problems in the real field layout: two stdin (AtCoder, Codeforces) and two
functional (LeetCode), three of them with private tests stored as LiveCodeBench stores them
(base64 of zlib of a pickled JSON string).
"""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from pathlib import Path

import pytest

from nsa.contracts import Benchmark
from nsa.errors import NSAError
from nsa.plugins.benchmarks.livecodebench import LiveCodeBench, decode_tests
from nsa.plugins.verifiers.code import CodeVerifier, parse_reference

COPY = Path(__file__).parents[1] / "data" / "benchmarks" / "livecodebench.jsonl"


def packed(value: object) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(value))).decode()


@pytest.fixture(scope="module")
def rows():
    return LiveCodeBench(source=str(COPY)).load()


def test_loads_ids_questions_and_code_references(rows):
    assert rows.column_names == ["id", "question", "answer"]
    assert rows["id"] == ["abc900_a", "9001", "1900A", "9002"]
    tests = [parse_reference(answer) for answer in rows["answer"]]
    # public tests first, then the private ones (pickled in rows 0, 2 and 3, plain JSON in row 1)
    assert tests[0].cases == (("1 2\n", "3\n"), ("100 200\n", "300\n"), ("-5 5\n", "0\n"))
    assert tests[0].fn_name is None and tests[2].fn_name is None
    assert tests[1].fn_name == "twoSum" and tests[1].cases[2] == ("[3, 3]\n6", "[0, 1]")
    assert tests[3].fn_name == "countVowels" and tests[3].cases[1] == ('"rhythm"', "0")


def test_questions_carry_the_format_instruction_and_starter_code(rows):
    stdin, functional = rows["question"][0], rows["question"][1]
    assert stdin.startswith("### Question:\nYou are given two integers A and B.")
    assert "Read the inputs from stdin" in stdin and "# YOUR CODE HERE" in stdin
    assert "def twoSum(self, nums: List[int], target: int) -> List[int]:" in functional
    bench = LiveCodeBench(source=str(COPY))
    assert isinstance(bench, Benchmark) and bench.name == "livecodebench"
    prompt = bench.prompt_template.format(question=stdin)
    assert stdin in prompt and prompt.rstrip().endswith("### Answer: (use the provided format with backticks)")


def test_since_until_and_limit_select_problems():
    assert LiveCodeBench(source=str(COPY), since="2024-08-01", until="2025-01-01").load()["id"] == ["9001", "1900A"]
    assert LiveCodeBench(source=str(COPY), since="2024-08-01", limit=1).load()["id"] == ["9001"]


@pytest.mark.parametrize("field", ["private_test_cases", "question_content", "metadata"])
def test_a_missing_field_names_the_field_and_the_file(tmp_path, field):
    row = json.loads(COPY.read_text().splitlines()[0])
    del row[field]
    broken = tmp_path / "lcb.jsonl"
    broken.write_text(json.dumps(row) + "\n")
    with pytest.raises(NSAError, match=rf"lcb\.jsonl: no field '{field}'.*LiveCodeBench reads fields"):
        LiveCodeBench(source=str(broken)).load()


def test_pickled_tests_may_hold_plain_data_only(tmp_path):
    plain = [{"input": "1\n", "output": "1\n", "testtype": "stdin"}]
    assert decode_tests(packed(json.dumps(plain)), "here") == plain

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    with pytest.raises(NSAError, match=r"here: test cases are neither JSON nor base64/zlib/pickle"):
        decode_tests(packed(Payload()), "here")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(NSAError, match="not a list of"):
        decode_tests(json.dumps({"input": "1"}), "here")


@pytest.mark.sandbox
def test_the_verifier_scores_right_and_wrong_programs(rows):
    verifier = LiveCodeBench(source=str(COPY), timeout_s=2.0).verifier()
    assert isinstance(verifier, CodeVerifier) and verifier.timeout_s == 2.0
    add = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    subtract = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
    two_sum = (
        "```python\nclass Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
        "        return next([i, j] for j in range(len(nums)) for i in range(j) if nums[i] + nums[j] == target)\n```"
    )
    first_two = "```python\nclass Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n```"
    references = [rows["answer"][0]] * 2 + [rows["answer"][1]] * 2
    outcomes = verifier.verify(references, [add, subtract, two_sum, first_two])
    assert [o.reward for o in outcomes] == [1.0, 0.0, 1.0, 0.0]
    assert [o.status for o in outcomes] == ["ok", "wrong_answer", "ok", "wrong_answer"]


def test_functional_tests_need_a_function_name(tmp_path):
    row = json.loads(COPY.read_text().splitlines()[1])
    row["metadata"] = "{}"
    broken = tmp_path / "lcb.jsonl"
    broken.write_text(json.dumps(row) + "\n")
    with pytest.raises(NSAError, match=r"lcb\.jsonl: problem 9001 has functional tests but no func_name"):
        LiveCodeBench(source=str(broken)).load()


def test_the_verifier_grades_as_livecodebench_does(rows):
    """Its imports come first (an answer may use Counter, cache, inf unimported), a functional answer's
    __main__ block does not run (it would eat the arguments on stdin), and numbers compare as Decimals."""
    verifier = LiveCodeBench(source=str(COPY), timeout_s=2.0).verifier()
    as_float = "```python\na, b = map(int, input().split())\nprint(float(a + b))\n```"  # "3.0" for "3"
    count_vowels = (
        "```python\nclass Solution:\n    def countVowels(self, word: str) -> int:\n"
        "        @cache\n        def vowels(letters):\n"
        "            return sum(Counter(letters)[v] for v in 'aeiou')\n"
        "        return min(vowels(word), inf)\n\n\n"
        'if __name__ == "__main__":\n    print(Solution().countVowels(input()))\n```'
    )
    outcomes = verifier.verify([rows["answer"][0], rows["answer"][3]], [as_float, count_vowels])
    assert [o.status for o in outcomes] == ["ok", "ok"]
