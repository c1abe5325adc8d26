"""LiveCodeBench: competitive programming problems from LeetCode, AtCoder and Codeforces (Jain et al., 2024).

Hub layout (livecodebench/code_generation_lite, split test: test.jsonl .. test6.jsonl, releases v1-v6):
``question_id``, ``question_content``, ``starter_code`` (LeetCode's class stub, empty for stdin
problems), ``public_test_cases`` (a JSON list of ``{input, output, testtype}``, testtype ``stdin`` or
``functional``), ``private_test_cases`` (the same list as JSON, or as base64 of zlib of a pickled JSON
string), ``metadata`` (JSON; ``func_name`` for functional problems) and ``contest_date``.

The answer column is CodeVerifier's reference: public and private tests together, with ``fn_name`` for
functional problems. The pickled private tests are read by an unpickler that refuses every global, so
a crafted row can build nothing but plain strings, numbers and containers. The question column holds
the problem, then LiveCodeBench's own format instruction (stdin, or the starter code to complete).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from nsa.contracts import Verifier
from nsa.errors import NSAError

FIELDS = ("question_id", "question_content", "starter_code", "public_test_cases", "private_test_cases", "metadata")

# LiveCodeBench's generic prompt (lcb_runner/prompts/code_generation.py): system line, question, format, answer cue.
LCB_TEMPLATE = (
    "You are an expert Python programmer. You will be given a question (problem specification) and will "
    "generate a correct Python program that matches the specification and passes all tests.\n\n"
    "{question}\n\n### Answer: (use the provided format with backticks)\n"
)
_STDIN_FORMAT = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on the "
    "sample inputs). Enclose your code within delimiters as follows."
)
_STARTER_FORMAT = (
    "You will use the following starter code to write the solution to the problem and enclose your code "
    "within delimiters."
)


@dataclass
class LiveCodeBench:
    """LiveCodeBench from ``source`` (a hub id, or a local .jsonl/.json/.parquet file of the same layout).

    Programs are run by CodeVerifier (each test in a sandboxed subprocess, ``timeout_s`` and ``memory_mb``
    each, ``workers`` at once). ``since`` / ``until`` keep problems whose ``contest_date`` lies in that range
    (ISO dates, e.g. ``2024-08-01``; the end is exclusive), the usual way to pick problems newer than a
    model's training data. ``limit`` keeps the first N problems; ``name`` prefixes the metrics.
    """

    source: str = "livecodebench/code_generation_lite"
    hub_files: str | None = "test*.jsonl"  # releases v1-v6; "test6.jsonl" is v6's new problems alone
    split: str = "test"
    limit: int | None = None
    since: str | None = None
    until: str | None = None
    name: str = "livecodebench"
    prompt_template: str = LCB_TEMPLATE
    timeout_s: float = 6.0
    memory_mb: int = 1024
    workers: int = 2

    def load(self) -> Dataset:
        raw = self._raw()
        needed = FIELDS + (("contest_date",) if self.since or self.until else ())
        for field in needed:
            if field not in raw.column_names:
                raise NSAError(
                    f"{self.source}: no field '{field}' (fields: {', '.join(raw.column_names)}); "
                    f"LiveCodeBench reads fields {', '.join(needed)}"
                )
        keep = range(len(raw))
        if self.since or self.until:  # by column: rows hold megabytes of tests, read only the kept ones
            keep = [i for i, date in enumerate(raw["contest_date"]) if self._in_range(str(date or ""))]
        rows = raw.select(keep[: self.limit] if self.limit is not None else keep)
        table: dict[str, list[str]] = {"id": [], "question": [], "answer": []}
        for row in rows:
            table["id"].append(str(row["question_id"]))
            table["question"].append(question_text(row))
            table["answer"].append(reference(row, self.source))
        return Dataset.from_dict(table)

    def verifier(self) -> Verifier:
        from nsa.plugins.verifiers.code import CodeVerifier

        return CodeVerifier(timeout_s=self.timeout_s, memory_mb=self.memory_mb, workers=self.workers)

    def _raw(self) -> Dataset:
        """The rows: a local file through ``datasets``; a hub id as its ``hub_files``, read by the
        json builder (the hub repo's loading script is refused by datasets >= 4)."""
        import datasets

        from nsa.stages.problems import FILE_BUILDERS, load_raw

        if Path(self.source).suffix in FILE_BUILDERS or not self.hub_files:
            return load_raw(self.source, self.split)
        files = f"hf://datasets/{self.source}/{self.hub_files}"
        try:
            return datasets.load_dataset("json", data_files=files, split="train")
        except Exception as err:  # offline, or a repo without such files
            raise NSAError(f"could not load LiveCodeBench files {files}: {str(err).splitlines()[0]}") from None

    def _in_range(self, date: str) -> bool:
        return (not self.since or date >= self.since) and (not self.until or date < self.until)


def question_text(row: dict) -> str:
    """The problem, then LiveCodeBench's format instruction and code block (the starter code, if any)."""
    starter = row["starter_code"] or ""
    fmt = _STARTER_FORMAT if starter.strip() else _STDIN_FORMAT
    code = starter if starter.strip() else "# YOUR CODE HERE"
    return f"### Question:\n{row['question_content']}\n\n### Format: {fmt}\n```python\n{code}\n```"


def reference(row: dict, source: str) -> str:
    """CodeVerifier's reference: public then private tests, and ``fn_name`` when the tests are functional."""
    from nsa.plugins.verifiers.code import reference_json

    where = f"{source}: problem {row['question_id']}"
    tests = decode_tests(row["public_test_cases"], where) + decode_tests(row["private_test_cases"], where)
    if not tests:
        raise NSAError(f"{where} has no tests in public_test_cases or private_test_cases")
    functional = any(test.get("testtype") == "functional" for test in tests)
    fn_name = _metadata(row["metadata"], where).get("func_name") if functional else None
    if functional and not (isinstance(fn_name, str) and fn_name):
        raise NSAError(f"{where} has functional tests but no func_name in its metadata")
    return reference_json([(str(test["input"]), str(test["output"])) for test in tests], fn_name)


def _metadata(text: str | dict | None, where: str) -> dict:
    try:
        metadata = text if isinstance(text, dict) else json.loads(text or "{}")
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise NSAError(f"{where}: metadata {str(text)[:80]!r} is not a JSON object")
    return metadata


def decode_tests(text: str | None, where: str) -> list[dict]:
    """A test list from JSON, or from base64 of zlib of a pickled JSON string (LiveCodeBench's private tests)."""
    text = (text or "").strip()
    tests = _decode(text, where) if text else []
    if not isinstance(tests, list) or not all(isinstance(t, dict) and {"input", "output"} <= t.keys() for t in tests):
        raise NSAError(f"{where}: test cases are not a list of {{input, output, testtype}} objects")
    return tests


def _decode(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        pickled = zlib.decompress(base64.b64decode(text, validate=True))
        inner = _PlainUnpickler(io.BytesIO(pickled)).load()
        return json.loads(inner) if isinstance(inner, str | bytes) else inner
    except (binascii.Error, zlib.error, pickle.UnpicklingError, ValueError, EOFError) as err:
        raise NSAError(f"{where}: test cases are neither JSON nor base64/zlib/pickle of JSON ({err})") from None


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain values only: any class or function reference in the data is refused, never imported."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: test cases hold plain data only")
