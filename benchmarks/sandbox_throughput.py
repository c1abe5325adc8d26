"""Grading throughput of the code sandbox (programs per second), today's against an earlier commit's, one run.

Each setting grades the same correct programs (the 24 shipped problems' reference programs are not in the repo,
so a correct sum program on its four tests, and an LCB-style functional one) through ``execute`` with 2 runs at
once, as CodeVerifier does. Settings alternate round by round, so the machine's drift hits each alike:

- ``before``: the sandbox at ``--against`` (default ``dde1860~1``, before bubblewrap), loaded from git;
- ``bubblewrap``: today's, with every layer;
- ``no bubblewrap``: today's launcher layers alone, where this machine can run them (not as root with an
  interpreter under /root, which the fallback refuses).

Reported: programs per second per setting (median over rounds) and the ratio to ``before``.

    OMP_NUM_THREADS=1 python benchmarks/sandbox_throughput.py          # about a minute
    OMP_NUM_THREADS=1 python benchmarks/sandbox_throughput.py --rounds 5 --programs 64
    OMP_NUM_THREADS=1 python benchmarks/sandbox_throughput.py --python /usr/bin/python3   # with the fallback
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nsa.plugins.verifiers import sandbox

REPO = Path(__file__).resolve().parents[1]
PROGRAM = "a, b = map(int, input().split())\nprint(a + b)"
CASES = [("1 2\n", "3\n"), ("-5 5\n", "0\n"), ("100 250\n", "350\n"), ("-7 -8\n", "-15\n")]


def earlier(ref: str):
    """The sandbox module as it was at ``ref`` (it imported only the standard library)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:plugins/verifiers/sandbox.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "sandbox_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sandbox_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sandbox_before"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def rate(module, limits, programs: int) -> float:
    """Programs per second: each program runs on every test, 2 runs at once."""
    jobs = [case for _ in range(programs) for case in CASES]

    def one(case: tuple[str, str]) -> None:
        returncode, _, stdout, _ = module.execute(PROGRAM, case[0], "stdin", None, limits)
        assert returncode == 0 and stdout.strip() == case[1].strip(), (returncode, stdout)

    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, jobs))
    return programs / (time.perf_counter() - start)


def settings(ref: str) -> dict[str, tuple[object, object]]:
    before = earlier(ref)
    found = {
        "before": (before, before.checked_limits(before.Limits(6.0, 1024, 16))),
        "bubblewrap": (sandbox, sandbox.checked_limits(sandbox.Limits(6.0, 1024, 16))),
    }
    fallback = sandbox.Limits(6.0, 1024, 16, bubblewrap=False)
    try:
        found["no bubblewrap"] = (sandbox, sandbox.checked_limits(fallback))
    except ValueError as error:  # NSAError: the fallback refuses here
        print(f"no bubblewrap: not measured ({error})", file=sys.stderr)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="dde1860~1", help="the git commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--programs", type=int, default=32, help="programs per setting and round")
    parser.add_argument(
        "--python",
        help="the interpreter the sandbox runs (e.g. /usr/bin/python3, which uid 65534 "
        "can read, so that the fallback runs as root too); default: this one",
    )
    args = parser.parse_args()
    sys.executable = args.python or sys.executable
    found = settings(args.against)
    rates: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(args.rounds):
        for name, (module, limits) in found.items():
            rates[name].append(rate(module, limits, args.programs))
    base = statistics.median(rates["before"])
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{value:.2f}" for value in values)
        print(f"{name:>14}: {median:6.2f} programs/s ({runs}), {median / base:.2f}x before")


if __name__ == "__main__":
    main()
