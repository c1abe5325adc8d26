"""CodeVerifier on real programs in real sandboxed subprocesses (no mocks), bad ones included.

Every bad program shares one ``verify`` call with good ones: it is stopped and scored 0 while the
others still score right. The kernel layers are also tested alone (audit hook off) where this
machine has them, and the process-group kill with process creation allowed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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

pytestmark = pytest.mark.sandbox

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
            if ours and b"sandbox_launcher.py" in (entry / "cmdline").read_bytes():
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
    # workers changes no score, so it stays out of the stage cache key (the public attributes)
    assert public == {"timeout_s": 2.5, "memory_mb": 256, "output_mb": 4, "disk_mb": 64, "packages": []}
    assert verifier._workers == 3
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


@pytest.mark.parametrize("bubblewrap", [True, False])
@pytest.mark.parametrize("ending", ["time.sleep(30)", "pass"])
def test_the_whole_process_group_is_killed(ending, bubblewrap):
    """With process creation allowed (both refusing layers off), a grandchild still dies with its run."""
    marker = f"{os.getpid()}.{len(ending)}.{bubblewrap}"
    sleeper = f"[sys.executable, '-c', 'import time; time.sleep(30)', '{marker}']"
    spawner = f"import subprocess, sys, time\nsubprocess.Popen({sleeper})\n{ending}"
    # drop_root off: without bubblewrap, uid 65534 could not read this root's interpreter under /root
    allowed = Limits(1.0, 512, 1, bubblewrap=bubblewrap, drop_root=bubblewrap, filters=False, audit_hook=False)
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
        ("1\n2\n\n \n", "1\n2", True),  # and so is the whole output: blank lines around it drop
        ("3", "3\n\n", True),
        ("\n \n3\n", "3\n", True),
        ("a  b\n", "a b\n", False),  # spaces inside a line count
        ("1\n\n2\n", "1\n2\n", False),  # and so do blank lines between others
        ("", "3\n", False),
        ("", "\n", True),
        # where the strings differ, a line of numbers is compared as Decimals, as LiveCodeBench does
        ("0.50\n", "0.5\n", True),
        ("3.0 -0\n7\n", "3 0\n7.00\n", True),
        ("1  2\n", "1 2\n", True),
        ("1e3\n", "1000\n", True),
        ("0.3333\n", "0.33333\n", False),  # no tolerance
        ("1 2 3\n", "1 2\n", False),
        ("1 x\n", "1.0 x\n", False),  # the whole line must be numbers
        ("NaN\n", "nan\n", False),
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


# As LiveCodeBench's grader: its imports come first, in both modes, and functional programs run as a module.
LCB_STYLE = """
class Solution:
    def chain(self, n: int) -> int:
        @cache
        def depth(i):
            return 0 if i == 0 else 1 + depth(i - 1)

        heap = []
        heappush(heap, depth(n))
        return min(heappop(heap), inf)


if __name__ == "__main__":
    print(Solution().chain(int(sys.stdin.read())))
"""


def test_functional_programs_get_livecodebench_imports_and_their_main_block_does_not_run():
    """The __main__ block would eat the JSON arguments on stdin; @cache, heappush, inf come unimported;
    the recursion is 5000 deep (LiveCodeBench allows 50000)."""
    reference = reference_json([("5000", "5000"), ("3", "3")], fn_name="chain")
    outcome = CodeVerifier(timeout_s=5.0, memory_mb=512).verify([reference], [fenced(LCB_STYLE)])
    assert outcome == [Outcome(1.0, "ok")]


def test_stdin_programs_get_livecodebench_imports_too():
    program = LCB_STYLE + "    print(sqrt(4), gcd(4, 6), Counter('aab')['a'], bisect_left([1, 3], 2), deque([1])[0])\n"
    limits = Limits(timeout_s=5.0, memory_mb=512, output_mb=1)
    assert run_test(program, ("5000\n", "5000\n2.0 2 2 1 1\n"), None, limits) == "ok"


# Only the audit hook between the program and `outside`: no Landlock, and uid 0 (where the verifier is not root).
HOOK_ONLY = Limits(timeout_s=2.0, memory_mb=512, output_mb=1, drop_root=False, filters=False)


@pytest.mark.parametrize(
    "escape",
    [
        "os.close(os.open('link/dir_fd.txt', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))",
        "os.mkdir('link/dir_fd.txt', dir_fd=fd)",
        "os.symlink('/', 'link/dir_fd.txt', dir_fd=fd)",
        "os.rename('inside.txt', 'link/dir_fd.txt', src_dir_fd=fd, dst_dir_fd=fd)",
    ],
)
def test_a_dir_fd_relative_path_is_checked_where_it_points(outside, escape):
    """``os.open``'s audit event has no dir_fd: `link/...` looks inside the folder from its cwd, but is not."""
    program = f"""import os, shutil, tempfile
with tempfile.TemporaryDirectory() as scratch:  # shutil.rmtree, with dir_fd, inside the folder: fine
    os.mkdir(os.path.join(scratch, "sub"))
os.mkdir("d")
os.symlink({str(outside)!r}, "d/link")
fd = os.open("d", os.O_RDONLY)
os.close(os.open("inside.txt", os.O_WRONLY | os.O_CREAT, dir_fd=fd))  # fine: d/inside.txt
assert os.path.exists("d/inside.txt")
{escape}
print(3)
"""
    assert run_test(program, ("", "3"), None, HOOK_ONLY) == "blocked"
    assert not (outside / "dir_fd.txt").exists()
    assert run_test(program.replace(escape, ""), ("", "3"), None, HOOK_ONLY) == "ok"  # all but the escape


@pytest.mark.parametrize(
    "attempt",
    [
        "sqlite3.connect({db!r}).execute('create table t (x)')",
        "sqlite3.connect('file:' + {db!r}.replace('/', '%2F') + '?mode=rwc', uri=True).execute('create table t (x)')",
        "sqlite3.connect(':memory:').execute('attach database ' + repr({db!r}) + ' as other')",
        "sqlite3.connect('inside.db').execute('vacuum into ' + repr({db!r}))",
    ],
)
def test_sqlite_writes_only_inside_the_folder(outside, attempt):
    database = outside / "escaped.db"
    program = "import sqlite3\n" + attempt.format(db=str(database)) + "\nprint(3)"
    assert run_test(program, ("", "3"), None, HOOK_ONLY) in ("blocked", "runtime_error")
    assert not database.exists()


def test_sqlite_still_works_inside_the_folder():
    program = """import sqlite3
for name in ("inside.db", ":memory:", ""):
    database = sqlite3.connect(name)
    database.execute("create table t (x)")
    database.execute("insert into t values (3)")
    print(database.execute("select x from t").fetchone()[0])
"""
    assert run_test(program, ("", "3\n3\n3"), None, HOOK_ONLY) == "ok"


def interpreters_with(module: str) -> list[str]:
    """Of this interpreter and the system's, those that have ``module``."""
    candidates = dict.fromkeys([sys.executable, "/usr/bin/python3"])
    return [
        python
        for python in candidates
        if os.path.exists(python) and subprocess.run([python, "-I", "-c", f"import {module}"]).returncode == 0
    ]


@pytest.mark.parametrize("module", ["_dbm"])  # _gdbm refused the same way; no interpreter here has it
def test_dbm_writes_only_inside_the_folder(outside, monkeypatch, module):
    """dbm.gnu and dbm.ndbm write in C, with no audit event: dbm falls back to dbm.dumb, which the hook sees."""
    pythons = interpreters_with(module)
    if not pythons:
        pytest.skip(f"no interpreter here has {module}")
    monkeypatch.setattr(sys, "executable", pythons[0])
    program = (
        f"import dbm\nfor name in ('inside', {str(outside / module)!r}):\n    dbm.open(name, 'c').close()\nprint(3)"
    )
    assert run_test(program, ("", "3"), None, HOOK_ONLY) == "blocked"
    assert not [path for path in outside.iterdir() if path.name.startswith(module)]


@pytest.mark.parametrize(
    "change",
    ["os.fchmod(fd, 0)", "os.chmod(fd, 0)", "os.utime(fd, (0, 0))", "os.fchown(fd, 12345, 12345)"],
)
def test_a_descriptor_is_checked_as_the_file_it_names(outside, change):
    """Landlock has no right for chmod, chown or utime: the hook resolves descriptors through /proc/self/fd."""
    target = outside / "descriptor.txt"
    target.write_text("x")
    before = target.stat()
    program = f"import os\nfd = os.open({str(target)!r}, os.O_RDONLY)\n{change}\nprint(3)"
    assert run_test(program, ("", "3"), None, HOOK_ONLY) == "blocked"
    after = target.stat()
    assert (after.st_mode, after.st_uid, after.st_mtime_ns) == (before.st_mode, before.st_uid, before.st_mtime_ns)
    inside = (
        "import os\nfd = os.open('mine', os.O_WRONLY | os.O_CREAT)\n" + change.replace("12345", "-1") + "\nprint(3)"
    )
    assert run_test(inside, ("", "3"), None, HOOK_ONLY) == "ok"
