"""CodeVerifier: runs the program in a response against a problem's tests, each run in a sandboxed subprocess.

The reference is a JSON string of tests::

    {"tests": [{"input": "1 2\\n", "output": "3\\n"}, ...]}                       stdin/stdout tests
    {"fn_name": "twoSum", "tests": [{"input": "[2,7]\\n9", "output": "[0,1]"}]}   functional tests

Grading follows LiveCodeBench's grader (``lcb_runner/evaluation/testing_util.py``). Without ``fn_name``
the program reads ``input`` on stdin and must print ``output``: both are stripped at both ends, split into
lines and each line stripped; the line counts must match, and each line must be equal or, failing that, a
line of numbers equal as Decimals (so ``"  3 \\n\\n"`` matches ``"3"`` and ``"0.50"`` matches ``"0.5"``, but
``"a  b"`` does not match ``"a b"``, nor ``"0.333"`` ``"0.3333"``). With ``fn_name`` (LeetCode style) each
line of ``input`` is one JSON argument, and the program runs as module ``tmp_sol`` (so its ``__main__``
block does not run); its ``Solution().<fn_name>`` (or a top-level function of that name) is called with
the arguments, and its result must equal the JSON ``output`` (tuples count as lists). Both modes first
run LiveCodeBench's ``import_string`` (``from math import *``, ``heapq``, ``functools``, ``typing`` ...
and ``sys.setrecursionlimit(50000)``), so answers may use ``List``, ``cache``, ``inf`` or ``heappush``
unimported.

What still differs from LiveCodeBench: each test is a fresh process on the real stdin, rather than a
function called in one process with stdin patched (so a stdin program runs as ``__main__`` and any
``__main__`` block runs, where LiveCodeBench runs only one that is the program's last statement); a
functional result is compared after a JSON round trip inside the sandbox (so an object cannot fake
equality, nested tuples count as lists too, dict keys as strings, and a result that JSON cannot hold,
such as a set, is a runtime error), and blank lines in a functional ``input`` are skipped.

The program is the last fenced block tagged ``python``, ``python3`` or ``py`` in the response; when there
is none, the last fenced block with no language tag. A response earns 1.0 when every test passes, else
0.0. A response stops at its first failing test; ``Outcome.status`` says why:

- ``ok``: every test passed (reward 1.0);
- ``empty``: blank response; ``no_code``: no fenced code block (neither is run);
- ``wrong_answer``: the program ended normally with other output;
- ``runtime_error``: it raised, or exited non-zero (also when the kernel refused it something);
- ``timeout``: it ran longer than ``timeout_s`` on one test (wall clock or CPU);
- ``memory``: it ran out of its ``memory_mb`` of address space (MemoryError);
- ``output_limit``: it wrote more than ``output_mb`` to stdout, stderr or a file;
- ``blocked``: the audit hook refused it an operation (a new process, a socket, a file outside its folder
  and the interpreter's, a signal to another process, ctypes library loading) and the program did not
  recover. Where the program gets past the hook, the kernel's refusal reads as ``runtime_error``.

Each test runs in a fresh sandbox with no view of the host: ``sandbox.py`` describes it (bubblewrap where
installed, then the launcher's rlimits, network namespace, no root, Landlock, seccomp and audit hook), and
``sandbox_report()`` there says which layers are in force on this machine. Bad programs never hang or crash
the verifier: each run is bounded and scored 0, and the others go on.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

from nsa.contracts import Outcome
from nsa.errors import NSAError
from nsa.plugins.verifiers.sandbox import EXIT_MEMORY, EXIT_REFUSED, Limits, checked_limits, execute, package_origins

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
_PYTHON_TAGS = {"python", "python3", "py"}


@dataclass(frozen=True)
class CodeTests:
    """A parsed reference: (input, output) pairs, and the function to call for functional tests."""

    cases: tuple[tuple[str, str], ...]
    fn_name: str | None = None


def reference_json(cases: Sequence[tuple[str, str]], fn_name: str | None = None) -> str:
    """The reference string CodeVerifier reads, for problem files and benchmark plugins."""
    tests = [{"input": given, "output": expected} for given, expected in cases]
    return json.dumps({"tests": tests, **({"fn_name": fn_name} if fn_name else {})})


def parse_reference(text: str) -> CodeTests:
    """Parse a reference; an NSAError names what is wrong (a bad reference is a data bug, not a bad answer)."""
    parsed = None
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        data = json.loads(text)
        parsed = CodeTests(tuple((case["input"], case["output"]) for case in data["tests"]), data.get("fn_name"))
    strings = parsed is not None and all(isinstance(part, str) for case in parsed.cases for part in case)
    if not strings or not parsed.cases or not isinstance(parsed.fn_name, str | None):
        raise NSAError(
            f"code reference {text[:80]!r} is not a JSON object with a non-empty list of string tests "
            '{"tests": [{"input": ..., "output": ...}]}; fix the answer field of the problem'
        )
    return parsed


def extract_program(response: str) -> str | None:
    """The last ```python (or ```python3, ```py) block; else the last untagged block; None when there is none."""
    blocks = [(match.group(1).lower(), match.group(2)) for match in _FENCE.finditer(response)]
    for wanted in (_PYTHON_TAGS, {""}):
        tagged = [code for tag, code in blocks if tag in wanted]
        if tagged:
            return tagged[-1] if tagged[-1].strip() else None
    return None


class CodeVerifier:
    """Scores Python programs against tests in sandboxed subprocesses; see the module docstring.

    ``timeout_s`` bounds each test run (wall clock, plus a second for the interpreter to start, and
    CPU time), ``memory_mb`` its address space, ``output_mb`` each file it writes (stdout and stderr
    included), ``disk_mb`` all it writes in its folder (a tmpfs, where bubblewrap is installed).
    ``packages`` names the site-packages a program may import (e.g. ``[numpy]``); by default it sees the
    standard library alone. ``workers`` runs go at once, each launched from its own thread; it changes no
    score, so it is kept private, out of the stage cache key (the public attributes).
    """

    def __init__(
        self,
        timeout_s: float = 6.0,
        memory_mb: int = 1024,
        output_mb: int = 16,
        disk_mb: int = 64,
        packages: Sequence[str] = (),
        workers: int = 2,
    ) -> None:
        if timeout_s <= 0 or memory_mb < 64 or output_mb < 1 or disk_mb < 1 or workers < 1:
            raise ValueError(
                "CodeVerifier needs timeout_s > 0, memory_mb >= 64, output_mb >= 1, disk_mb >= 1 and workers >= 1, "
                f"got {timeout_s}, {memory_mb}, {output_mb}, {disk_mb}, {workers}"
            )
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.output_mb = output_mb
        self.disk_mb = disk_mb
        self.packages = list(packages)
        self._workers = workers
        self._limits = Limits(timeout_s, memory_mb, output_mb, disk_mb, tuple(packages))
        package_origins(self._limits.packages)  # an unknown package is an error now, not at the first program

    def close(self) -> None:
        """Nothing to release: threads and sandboxes live only within one ``verify`` call."""

    def verify(self, references: Sequence[str], responses: Sequence[str]) -> list[Outcome]:
        if len(references) != len(responses):
            raise ValueError(f"CodeVerifier got {len(references)} references for {len(responses)} responses")
        tests = {text: parse_reference(text) for text in set(references)}
        outcomes = [Outcome(1.0, "ok")] * len(responses)
        jobs: list[tuple[int, int, str, tuple[str, str], str | None]] = []
        for index, (reference, response) in enumerate(zip(references, responses)):
            program = extract_program(response)
            if not response.strip() or program is None:
                outcomes[index] = Outcome(0.0, "empty" if not response.strip() else "no_code")
                continue
            parsed = tests[reference]
            jobs.extend((index, number, program, case, parsed.fn_name) for number, case in enumerate(parsed.cases))
        if jobs:
            for index, status in _run_jobs(jobs, checked_limits(self._limits), self._workers).items():
                outcomes[index] = Outcome(0.0, status)
        return outcomes


def _run_jobs(jobs: Sequence[tuple], limits: Limits, workers: int) -> dict[int, str]:
    """Run every (response, test) job; by response, the status of its first failing test (in test order).

    Once a test of a response fails, its tests not yet started are skipped: it scores 0 whatever they do.
    """
    failures: dict[int, tuple[int, str]] = {}
    lock = threading.Lock()

    def work(job: tuple) -> None:
        index, number, program, case, fn_name = job
        if index in failures:
            return
        status = run_test(program, case, fn_name, limits)
        if status != "ok":
            with lock:
                if index not in failures or number < failures[index][0]:
                    failures[index] = (number, status)

    with ThreadPoolExecutor(workers, thread_name_prefix="nsa-code") as pool:
        list(pool.map(work, jobs))
    return {index: status for index, (_, status) in failures.items()}


def run_test(program: str, case: tuple[str, str], fn_name: str | None, limits: Limits) -> str:
    """Run ``program`` on one test in a fresh sandbox: the test's status (``ok``, ``wrong_answer``, ...)."""
    given, expected = case
    returncode, timed_out, output, _ = execute(program, given, "call" if fn_name else "stdin", fn_name, limits)
    if timed_out or returncode in (-signal.SIGKILL, -signal.SIGXCPU):
        return "timeout"  # the parent's clock, or RLIMIT_CPU
    failures = {-signal.SIGXFSZ: "output_limit", EXIT_MEMORY: "memory", EXIT_REFUSED: "blocked", 0: None}
    if returncode not in failures:
        return "runtime_error"
    return failures[returncode] or ("ok" if _same_output(output, expected, fn_name) else "wrong_answer")


def _same_output(output: str, expected: str, fn_name: str | None) -> bool:
    if fn_name is None:
        got, want = _stripped_lines(output), _stripped_lines(expected)
        return len(got) == len(want) and all(a == b or _same_numbers(a, b) for a, b in zip(got, want))
    try:
        return json.loads(output) == json.loads(expected)
    except ValueError:
        return False


def _stripped_lines(text: str) -> list[str]:
    # As LiveCodeBench's get_stripped_lines: blank lines around the output drop, those between others count.
    return [line.strip() for line in text.strip().split("\n")]


def _same_numbers(got: str, want: str) -> bool:
    """As LiveCodeBench, where two lines differ: both all numbers, equal as Decimals ("0.50" == "0.5", no tolerance)."""
    try:
        return [Decimal(word) for word in got.split()] == [Decimal(word) for word in want.split()]
    except ArithmeticError:  # decimal.InvalidOperation: not a number (or a signalling NaN compared)
        return False
