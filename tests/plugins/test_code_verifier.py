"""CodeVerifier on real programs in real sandboxed subprocesses (no mocks), bad ones included.

Every bad program shares one ``verify`` call with good ones: it is stopped and scored 0 while the
others still score right. The kernel layers are also tested alone (audit hook off) where this
machine has them, and the process-group kill with process creation allowed.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from nsa.contracts import Outcome, Verifier
from nsa.errors import NSAError
from nsa.plugins.verifiers.code import (
    CodeVerifier,
    _same_output,
    extract_program,
    parse_reference,
    reference_json,
    run_test,
)
from nsa.plugins.verifiers.sandbox import Limits, execute, sandbox_report

SUM = reference_json([("1 2\n", "3\n"), ("-5 5\n", "0\n"), ("100 250\n", "350\n")])
GOOD = "a, b = map(int, input().split())\nprint(a + b)"
TWO_SUM = reference_json([("[2,7,11,15]\n9", "[0,1]"), ("[3,2,4]\n6", "[1,2]")], fn_name="twoSum")


def fenced(code: str, tag: str = "python") -> str:
    return f"Let me think.\n\n```{tag}\n{code}\n```\n"


def sandbox_processes() -> list[int]:
    """Pids of this test process's sandbox launchers still alive (their command line carries the launcher)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            ours = entry.name.isdigit() and (entry / "stat").read_text().rpartition(")")[2].split()[1] == str(
                os.getpid()
            )
            if ours and b"_sandbox_main" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def processes_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A folder anyone may write to: only the sandbox stands between a program and it."""
    folder = tmp_path_factory.mktemp("outside")
    folder.chmod(0o777)
    return folder


@pytest.fixture(scope="module")
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.3)
    yield server
    server.close()


@pytest.fixture(scope="module")
def mixed(outside, listener) -> dict[str, Outcome]:
    """One verify call: good, wrong and broken programs, and each bad input, between good ones."""
    port = listener.getsockname()[1]
    programs = {
        "good": fenced(GOOD),
        "wrong": fenced("a, b = map(int, input().split())\nprint(a - b)"),
        "raises": fenced("raise ValueError('no')"),
        "no_code": "The answer is to add the numbers.",
        "empty": "  \n",
        "trailing_space": fenced("a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\nprint('   ')"),
        "leading_space": fenced("a, b = map(int, input().split())\nprint('  ', a + b)"),
        "loops": fenced("while True:\n    pass"),
        "fork_bomb": fenced("import os\nwhile True:\n    os.fork()"),
        "fork_bomb_persistent": fenced(
            "import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n        pass"
        ),
        "writes_outside": fenced(f"open({str(outside / 'escaped.txt')!r}, 'w').write('x')\n" + GOOD),
        "ten_gb": fenced("block = bytearray(10 * 1024**3)\n" + GOOD),
        "socket": fenced(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n" + GOOD),
        "good_again": fenced(GOOD, tag="py"),
    }
    verifier = CodeVerifier(timeout_s=1.0, memory_mb=512, workers=2)
    start = time.monotonic()
    outcomes = verifier.verify([SUM] * len(programs), list(programs.values()))
    assert time.monotonic() - start < 30
    return dict(zip(programs, outcomes))


def test_meets_the_verifier_contract_and_hashes_only_its_config():
    verifier = CodeVerifier(timeout_s=2.5, memory_mb=256, output_mb=4, workers=3)
    assert isinstance(verifier, Verifier)
    public = {name: value for name, value in vars(verifier).items() if not name.startswith("_")}
    assert public == {"timeout_s": 2.5, "memory_mb": 256, "output_mb": 4, "workers": 3}
    verifier.close()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("good", Outcome(1.0, "ok")),
        ("good_again", Outcome(1.0, "ok")),
        ("trailing_space", Outcome(1.0, "ok")),
        ("leading_space", Outcome(1.0, "ok")),
        ("wrong", Outcome(0.0, "wrong_answer")),
        ("raises", Outcome(0.0, "runtime_error")),
        ("no_code", Outcome(0.0, "no_code")),
        ("empty", Outcome(0.0, "empty")),
        ("loops", Outcome(0.0, "timeout")),
        ("fork_bomb", Outcome(0.0, "blocked")),
        ("fork_bomb_persistent", Outcome(0.0, "timeout")),
        ("writes_outside", Outcome(0.0, "blocked")),
        ("ten_gb", Outcome(0.0, "memory")),
        ("socket", Outcome(0.0, "blocked")),
    ],
)
def test_each_program_is_scored_and_bad_ones_score_zero(mixed, name, expected):
    assert mixed[name] == expected


def test_bad_programs_leave_nothing_behind(mixed, outside, listener):
    assert not (outside / "escaped.txt").exists()
    with pytest.raises(TimeoutError):
        listener.accept()  # no connection ever arrived
    assert sandbox_processes() == []  # the fork bombs and the loop were stopped, children and all


def test_kernel_layers_hold_without_the_audit_hook(outside, listener):
    """Seccomp, Landlock and the network namespace refuse on their own (a program past the hook)."""
    report = sandbox_report()
    print("sandbox layers here:", report)
    bare = Limits(timeout_s=1.0, memory_mb=512, output_mb=1, audit_hook=False)
    port = listener.getsockname()[1]
    attempts = {
        "processes": "import os\nos.fork()\nprint(3)",
        "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint(3)",
        "files": f"open({str(outside / 'kernel.txt')!r}, 'w').write('x')\nprint(3)",
    }
    kernel = {
        "processes": "seccomp" in report["processes"],
        "network": "namespace" in report["network"] or "seccomp" in report["network"],
        "files": "landlock" in report["files"],
    }
    layers = [layer for layer in attempts if kernel[layer]]
    if not layers:
        pytest.skip(f"no kernel layer on this machine: {report}")
    for layer in layers:
        assert run_test(attempts[layer], ("", "3"), None, bare) == "runtime_error", layer
    assert not (outside / "kernel.txt").exists()
    with pytest.raises(TimeoutError):
        listener.accept()


@pytest.mark.parametrize("ending", ["time.sleep(30)", "pass"])
def test_the_whole_process_group_is_killed(ending):
    """With process creation allowed (both refusing layers off), a grandchild still dies with its run."""
    marker = f"{os.getpid()}.{len(ending)}"
    spawner = f"import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'])\n{ending}"
    allowed = Limits(timeout_s=1.0, memory_mb=512, output_mb=1, filters=False, audit_hook=False)
    status = run_test(spawner, ("", ""), None, allowed)
    assert status == ("timeout" if "sleep" in ending else "ok")
    time.sleep(0.2)  # SIGKILL is delivered at once, but give /proc a moment
    assert processes_with(marker) == []


def test_each_run_gets_a_fresh_folder_deleted_afterwards_and_a_clean_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    program = "import os\nprint(os.getcwd())\nprint(os.environ.get('OPENAI_API_KEY'))\nprint(sorted(os.listdir()))"
    _, _, first, _ = execute(program, "", "stdin", None, Limits(2.0, 512, 1))
    _, _, second, _ = execute(program, "", "stdin", None, Limits(2.0, 512, 1))
    folder, secret, listing = first.splitlines()
    assert secret == "None" and listing == "[]"
    assert folder != second.splitlines()[0]
    assert not Path(folder).exists() and not Path(folder).parent.exists()


def test_functional_tests_call_the_solution_and_compare_json():
    starter_style = "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
    good = starter_style + (
        "        print('debugging output is ignored')\n"
        "        seen = {}\n"
        "        for i, x in enumerate(nums):\n"
        "            if target - x in seen:\n"
        "                return (seen[target - x], i)\n"
        "            seen[x] = i\n"
    )
    equal_to_anything = "class Solution:\n    def twoSum(self, nums, target):\n        class Any(list):\n"
    equal_to_anything += "            def __eq__(self, other):\n                return True\n        return Any()\n"
    plain_function = "def twoSum(nums, target):\n    return [0, 1] if target == 9 else [1, 2]"
    responses = [fenced(good), fenced(equal_to_anything), fenced(plain_function)]
    outcomes = CodeVerifier(timeout_s=2.0, workers=2).verify([TWO_SUM] * 3, responses)
    assert [o.status for o in outcomes] == ["ok", "wrong_answer", "ok"]


@pytest.mark.parametrize(
    ("output", "expected", "same"),
    [
        ("3\n", "3\n", True),
        ("  3  \n", "3\n", True),  # each line is stripped at both ends, as LiveCodeBench does
        ("1 2\r\n3\r\n", "1 2\n3\n", True),
        ("1\n2\n\n \n", "1\n2", True),  # trailing blank lines are dropped
        ("3", "3\n\n", True),
        ("1  2\n", "1 2\n", False),  # spaces inside a line count
        ("1\n\n2\n", "1\n2\n", False),  # and so do blank lines between others
        ("\n3\n", "3\n", False),  # and before them
        ("", "3\n", False),
    ],
)
def test_stdin_output_is_compared_line_by_line_ignoring_surrounding_whitespace(output, expected, same):
    assert _same_output(output, expected, None) is same


def test_writing_too_much_stops_the_program():
    limits = Limits(timeout_s=2.0, memory_mb=512, output_mb=1)
    assert run_test("while True:\n    print('x' * 10000)", ("", "x"), None, limits) == "output_limit"


@pytest.mark.parametrize(
    ("response", "program"),
    [
        ("```python\nprint(1)\n```\ntext\n```python\nprint(2)\n```", "print(2)\n"),
        ("```py\nprint(1)\n```\n\nOutput:\n```\n1\n```", "print(1)\n"),  # a tagged block wins
        ("```\nprint(3)\n```", "print(3)\n"),  # no tagged block: the last untagged one
        ("```python3\nprint(4)\n```", "print(4)\n"),
        ("```cpp\nint main() {}\n```", None),
        ("```python\nprint(5)\n", None),  # not closed: cut off mid-program
        ("no code here", None),
    ],
)
def test_the_program_is_the_last_python_block(response, program):
    assert extract_program(response) == program


@pytest.mark.parametrize("reference", ["7", '{"tests": []}', '{"tests": [{"input": "1"}]}', "[1, 2]", '{"tests": 3}'])
def test_a_bad_reference_is_an_error_naming_the_answer_field(reference):
    with pytest.raises(NSAError, match="fix the answer field"):
        parse_reference(reference)
    with pytest.raises(NSAError):
        CodeVerifier().verify([reference], [fenced(GOOD)])
