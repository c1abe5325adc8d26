"""The code sandbox as an attacker reads it: hostile programs through ``CodeVerifier.verify``, as root and as an
ordinary user in the same run, and the fallback layers where bubblewrap is missing (no mocks: real bwrap,
real kernel layers, real uid 65534)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nsa.errors import NSAError
from nsa.plugins.verifiers import sandbox
from nsa.plugins.verifiers.code import CodeVerifier, run_test
from nsa.plugins.verifiers.sandbox import Limits, checked_limits, execute, sandbox_report
from nsa.plugins.verifiers.sandbox_launcher import DENIED, SYSCALLS, read_rules, seccomp_program

pytestmark = pytest.mark.sandbox

HERE = Path(__file__).parent
REPO = HERE.parents[1]
NOT_OK = {"blocked", "runtime_error", "timeout", "memory", "output_limit", "wrong_answer"}
SYSTEM_PYTHON = "/usr/bin/python3"


def check(result: dict) -> None:
    """Every attack refused or contained, nothing outside changed, no scratch folder left, cleanup safe."""
    print(json.dumps(result["statuses"], indent=1))
    assert result["report"]["files"].startswith("bubblewrap (read-only binds) + landlock"), result["report"]
    assert {name: status for name, status in result["statuses"].items() if status not in NOT_OK} == {}
    assert result["after"] == result["before"]
    assert result["left"] == []
    assert result["cleanup"] == {"removed": True, "key_mode_kept": True, "outside_kept": True}


def test_hostile_programs_are_refused_or_contained(tmp_path):
    sys.path.insert(0, str(HERE))
    try:
        from hostile import battery
    finally:
        sys.path.remove(str(HERE))
    report = sandbox_report()
    assert "bubblewrap" in report["files"] and "landlock (reads and writes)" in report["files"], report
    assert report["user"] == ("65534 (no capabilities)" if os.geteuid() == 0 else str(os.getuid()))
    check(battery(tmp_path / "outside"))


def _private_ancestor(path: str) -> tuple[str, str] | None:
    """(the highest folder above ``path`` that others cannot pass through, its child on the way), if any."""
    parts = Path(path).parts
    for depth in range(1, len(parts)):
        folder = str(Path(*parts[:depth]))
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder, parts[depth]
    return None


def as_nobody(command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` as uid/gid 65534 with no capabilities, with this interpreter and the repository readable.

    Where they lie under a private folder (this root's pyenv under /root, mode 0700), a private mount namespace
    covers that folder with a 0755 tmpfs holding only the way to them; nothing else of the host changes.
    """
    covers: dict[str, set[str]] = {}
    code = [str(REPO / name) for name in ("core", "plugins", "tests")]  # nsa, nsa.plugins and hostile.py
    for path in {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix), *code}:
        found = _private_ancestor(path)
        if found:
            covers.setdefault(found[0], set()).add(found[1])
    script = ["set -e", 'stage="$(mktemp -d)"']
    for number, (folder, children) in enumerate(covers.items()):
        for child in sorted(children):
            script += [f'mkdir "$stage/{number}{child}"', f'mount --bind "{folder}/{child}" "$stage/{number}{child}"']
        script.append(f'mount -t tmpfs -o mode=755 tmpfs "{folder}"')
        for child in sorted(children):
            script += [f'mkdir "{folder}/{child}"', f'mount --move "$stage/{number}{child}" "{folder}/{child}"']
    drop = "setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps=-all"
    script.append(f'exec {drop} env -i PATH=/usr/bin:/bin HOME=/tmp OMP_NUM_THREADS=1 "$@"')
    shell = ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script), "sh", *command]
    return subprocess.run(shell, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs as an ordinary user already: the test above is that case")
def test_hostile_programs_are_refused_or_contained_as_an_ordinary_user():
    """The same battery with the verifier itself as uid 65534 (bubblewrap in a user namespace, no root to drop):
    the user's own private key and files are as out of reach as root's."""
    outside = Path(tempfile.mkdtemp(prefix="nsa-hostile-"))
    try:
        os.chown(outside, 65534, 65534)
        result = as_nobody([sys.executable, str(HERE / "hostile.py"), str(outside / "outside")])
        assert result.returncode == 0, result.stderr[-3000:]
        check(json.loads(result.stdout.strip().splitlines()[-1]))
    finally:
        sandbox._remove_tree(outside)  # deep folders and all


def test_the_shipped_problems_cannot_be_looked_up_and_their_answers_still_pass():
    """The attack that scored 13 of 24 before: find your own stdin in the repo's problems file, print its output.
    Programs that know the answers themselves still score 1.0 on all 24."""
    rows = [json.loads(line) for line in (REPO / "data" / "code_problems.jsonl").read_text().splitlines()]
    cheat = (
        "import glob, json, sys\ngiven = sys.stdin.read()\n"
        f"for path in glob.glob({str(REPO / 'data' / '*.jsonl')!r}):\n"
        "    for line in open(path):\n"
        "        for test in json.loads(json.loads(line).get('answer', '{}')).get('tests', []):\n"
        "            if test['input'] == given:\n                print(test['output'])\n"
    )
    # Each problem's answers written into a program of its own: it passes its tests with no file to read.
    honest = [
        "import sys\nprint({table!r}[sys.stdin.read()], end='')".format(
            table={test["input"]: test["output"] for test in json.loads(row["answer"])["tests"]}
        )
        for row in rows
    ]
    references = [row["answer"] for row in rows] * 2
    outcomes = CodeVerifier(timeout_s=2.0, workers=2).verify(
        references, [f"```python\n{code}\n```" for code in [cheat] * len(rows) + honest]
    )
    assert [outcome.status for outcome in outcomes] == ["wrong_answer"] * len(rows) + ["ok"] * len(rows)


def test_an_allowed_package_imports_and_no_other_one_does():
    limits = checked_limits(Limits(timeout_s=5.0, memory_mb=1024, output_mb=1, packages=("numpy",)))
    assert run_test("import numpy\nprint(int(numpy.ones(3).sum()))", ("", "3"), None, limits) == "ok"
    assert run_test("import yaml\nprint(3)", ("", "3"), None, limits) == "runtime_error"  # installed, not allowed
    with pytest.raises(NSAError, match="CodeVerifier.packages: 'no_such_package' is not an installed package"):
        CodeVerifier(packages=["no_such_package"])


def test_read_rules_leave_a_hidden_folder_listable_but_unreadable(tmp_path):
    for name in ("os.py", "json", "site-packages"):
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("")
    rules = dict(read_rules([str(tmp_path), "/usr/lib"], [str(tmp_path / "site-packages")], 0b1101))
    assert rules == {str(tmp_path): 0b1000, str(tmp_path / "os.py"): 0b1101, str(tmp_path / "json"): 0b1101} | {
        "/usr/lib": 0b1101
    }


def test_no_bubblewrap_falls_back_with_a_warning_or_refuses_in_one_line(monkeypatch, capsys):
    """Without bwrap: Landlock and seccomp alone, said on stderr; where uid 65534 cannot read the interpreter
    (this root's pyenv under /root) the sandbox refuses to start, in one line, rather than keep root or a
    capability."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    limits = Limits(timeout_s=2.0, memory_mb=512, output_mb=1, disk_mb=2)
    readable = not _private_ancestor(os.path.realpath(sys.executable)) or os.geteuid() != 0
    if readable:
        assert checked_limits(limits).bubblewrap is False
    else:
        with pytest.raises(
            NSAError,
            match=r"CodeVerifier: the code sandbox failed to start: cannot confine itself: .*denied.*apt-get install",
        ):
            checked_limits(limits)
    assert "bubblewrap is not installed; reads rest on Landlock alone" in capsys.readouterr().err


@pytest.fixture
def system_python(monkeypatch):
    """Debian's python3 as the sandbox's interpreter: readable by uid 65534, so the fallback runs as root too."""
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.fail(f"{SYSTEM_PYTHON} is missing: the fallback tests need an interpreter outside /root")
    monkeypatch.setattr(sys, "executable", SYSTEM_PYTHON)


@pytest.mark.parametrize("hook", [True, False])
def test_the_fallback_confines_reads_with_landlock(system_python, tmp_path, hook):
    limits = Limits(timeout_s=2.0, memory_mb=512, output_mb=1, bubblewrap=False, audit_hook=hook)
    report = sandbox_report(limits)
    assert "landlock (reads and writes)" in report["files"] and "bubblewrap" not in report["files"], report
    assert report["user"] == ("65534 (no capabilities)" if os.geteuid() == 0 else str(os.getuid()))
    secret = tmp_path / "secret"
    secret.write_text("3")
    secret.chmod(0o644)  # world-readable: only Landlock stands in the way
    tmp_path.chmod(0o755)
    for attack in (f"print(open({str(secret)!r}).read())", "import os\nprint(os.listdir('/'))\nprint(3)"):
        assert run_test(attack, ("", "3"), None, limits) == ("blocked" if hook else "runtime_error")
    assert run_test("import fractions\nprint(fractions.Fraction(6, 2))", ("", "3"), None, limits) == "ok"


def test_a_program_sees_an_empty_root_with_the_interpreter_only():
    program = "import os\nprint(sorted(os.listdir('/')))\nprint(os.listdir(os.getcwd()))"
    limits = Limits(timeout_s=2.0, memory_mb=512, output_mb=1, audit_hook=False, filters=False)  # bubblewrap alone
    returncode, _, stdout, _ = execute(program, "", "stdin", None, limits)
    listing, folder = stdout.splitlines()
    tops = {path.split("/")[1] for path in sandbox._readable()[0]} | {"dev", "proc", "tmp"}
    assert returncode == 0 and set(ast.literal_eval(listing)) <= tops and folder == "[]"
    assert set(os.listdir("/")) - tops  # the host has folders (home, var, ...) that the program does not see


def run_filter(program: list[tuple[int, int, int, int]], arch: int, number: int, argument: int = 0) -> int:
    """What the kernel would return for one call: classic BPF, the instructions seccomp_program uses."""
    data, accumulator, pc = {0: number, 4: arch, 16: argument}, 0, 0
    while True:
        code, true, false, k = program[pc]
        if code == 0x06:  # ret
            return k
        if code == 0x20:  # ld word at k
            accumulator = data[k]
            pc += 1
            continue
        taken = {0x15: accumulator == k, 0x35: accumulator >= k, 0x45: bool(accumulator & k)}[code]
        pc += 1 + (true if taken else false)


@pytest.mark.parametrize("machine", sorted(SYSCALLS))
def test_the_seccomp_filter_refuses_what_it_says_and_nothing_else(machine):
    """allow = 0x7FFF0000, EPERM = 0x00050001, ENOSYS = 0x00050026 (SECCOMP_RET_ERRNO | errno)."""
    numbers, arch, pid = SYSCALLS[machine], {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[machine], 4242
    program = seccomp_program(machine, pid)
    allow, eperm, enosys = 0x7FFF0000, 0x00050001, 0x00050026
    for name in DENIED:
        if name in numbers:
            assert run_filter(program, arch, numbers[name]) == eperm, name
    assert run_filter(program, arch, numbers["clone"], 0x10000 | 0x100) == allow  # CLONE_THREAD | CLONE_VM
    assert run_filter(program, arch, numbers["clone"], 0x11) == eperm  # fork through clone (SIGCHLD)
    assert run_filter(program, arch, numbers["kill"], pid) == allow
    assert run_filter(program, arch, numbers["kill"], 1) == eperm
    assert run_filter(program, arch, numbers["tgkill"], pid + 1) == eperm
    assert run_filter(program, arch, numbers["clone3"]) == enosys
    assert run_filter(program, arch, 0) == allow  # read (x86_64) / io_setup (aarch64)
    assert run_filter(program, arch, 0x40000000 | 59) == eperm  # an x32 call
    assert run_filter(program, 0xDEADBEEF, 0) == eperm  # another architecture's numbers


def test_the_kernel_refuses_what_the_hook_would_not_see():
    """With the audit hook off (as after a program undid it, e.g. by importing a C extension it wrote), raw
    system calls that hold memory outside RLIMIT_AS or reach other processes fail with EPERM (errno 1)."""
    import platform

    numbers = SYSCALLS[platform.machine()]
    calls = {
        "semget": "0, 32000, 0o1600",  # IPC_PRIVATE, 32000 semaphores, IPC_CREAT | 0600
        "msgget": "0, 0o1600",
        "shmget": "0, 1 << 30, 0o1600",
        "memfd_create": "b'x', 0",
        "mq_open": "b'/nsa', 0o100 | 2, 0o600, None",  # O_CREAT | O_RDWR
        "prlimit64": "1, 1, None, None",  # another process's RLIMIT_FSIZE
        "setpriority": "0, 1, 19",
        "fcntl": "1, 8, 1",  # F_SETOWN: SIGIO to pid 1
        "unshare": "0x10000000",  # CLONE_NEWUSER
    }
    program = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n" + "".join(
        f"print({name!r}, libc.syscall({numbers[name]}, {arguments}), ctypes.get_errno())\n"
        for name, arguments in calls.items()
    )
    limits = Limits(timeout_s=5.0, memory_mb=512, output_mb=1, audit_hook=False)
    returncode, _, stdout, stderr = execute(program, "", "stdin", None, limits)
    assert returncode == 0, stderr
    assert stdout.split("\n")[:-1] == [f"{name} -1 1" for name in calls]
