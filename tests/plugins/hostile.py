"""Hostile programs against the code sandbox, through the public ``CodeVerifier.verify``, as an attacker reads it.

Shared by the tests as root (imported) and as an ordinary user (``python hostile.py FOLDER`` run as uid 65534,
printing JSON). Each attack prints the expected output ("3", or the test's secret) only if it got through,
so a status of ``ok`` means the sandbox failed; ``files()`` says whether anything outside changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from nsa.plugins.verifiers.code import CodeVerifier, reference_json
from nsa.plugins.verifiers.sandbox import _remove_tree, checked_limits, sandbox_report

THREE = reference_json([("", "3\n")])
SECRET_INPUT, SECRET = "17 25\n", "the-expected-output-4242\n"
LOOKUP = reference_json([(SECRET_INPUT, SECRET)])
# Undoes the audit hook from plain Python: it resolves paths with os.path.realpath, so make every path "inside".
UNDO_HOOK = "import os, os.path\nos.path.realpath = lambda path, **_: os.getcwd()\n"
DISK_MB = 8


def plant(outside: Path) -> dict[str, Path]:
    """The files an attacker wants: a private key, a plain file, the problems with their answers, a stage cache.

    They belong to the user the sandbox runs programs as (uid 65534 when the verifier is root), so that file
    permissions would let it through: only the sandbox stands in the way.
    """
    outside.mkdir(parents=True, exist_ok=True)
    outside.chmod(0o777)
    row = json.dumps({"question": "add", "answer": LOOKUP, "input": SECRET_INPUT, "output": SECRET})
    (outside / "cache" / "judge-abc" / "shard-00000").mkdir(parents=True, exist_ok=True)
    paths = {
        "key": outside / "key",
        "plain": outside / "plain",
        "problems": outside / "problems.jsonl",
        "cache": outside / "cache" / "judge-abc" / "shard-00000" / "data.jsonl",
    }
    for name, path in paths.items():
        path.write_text("3\n" if name in ("key", "plain") else row + "\n")
        path.chmod(0o600 if name == "key" else 0o644)
    for path in [outside, *outside.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(path, 65534, 65534)
    return paths


def attacks(paths: dict[str, Path], outside: Path) -> dict[str, tuple[str, str]]:
    """name -> (reference, program)."""
    key, plain = str(paths["key"]), str(paths["plain"])
    finder = (
        "import json, os, sys\ngiven = sys.stdin.read()\nfor top, _, names in os.walk({root!r}):\n"
        "    for name in names:\n        for line in open(os.path.join(top, name)):\n"
        "            row = json.loads(line)\n            if row['input'] == given:\n"
        "                print(row['output'])\n"
    )
    memory = "import os\nfd = os.memfd_create('x')\nfor _ in range(1300):\n    os.write(fd, b'x' * (1 << 20))\nprint(3)"
    disk = f"for n in range({2 * DISK_MB}):\n    open(f'f{{n}}', 'wb').write(b'x' * (1 << 20))\nprint(3)"
    return {
        "read_key": (THREE, f"print(open({key!r}).read())"),
        "read_key_hook_undone": (THREE, UNDO_HOOK + f"print(open({key!r}).read())"),
        "read_shadow": (THREE, "print(3 if open('/etc/shadow').read() else 0)"),
        "list_root_home": (THREE, "import os\nos.listdir('/root')\nprint(3)"),
        "list_home": (THREE, "import os\nos.listdir('/home')\nprint(3)"),
        "problems_file": (LOOKUP, finder.format(root=str(outside))),
        "stage_cache": (LOOKUP, finder.format(root=str(outside / "cache"))),
        "memfd_past_limit": (THREE, memory),
        "dev_shm": (THREE, "open('/dev/shm/nsa', 'wb').write(b'x' * (300 << 20))\nprint(3)"),
        "disk_past_budget": (THREE, disk),
        "chmod_hook_undone": (THREE, UNDO_HOOK + f"os.chmod({plain!r}, 0o4777)\nprint(3)"),
        "utime_hook_undone": (THREE, UNDO_HOOK + f"os.utime({plain!r}, (0, 0))\nprint(3)"),
        "chown_hook_undone": (THREE, UNDO_HOOK + f"os.chown({plain!r}, os.getuid(), 0)\nprint(3)"),
        "xattr_hook_undone": (THREE, UNDO_HOOK + f"os.setxattr({plain!r}, 'user.nsa', b'1')\nprint(3)"),
        "link_hook_undone": (THREE, UNDO_HOOK + f"os.link({plain!r}, 'mine')\nopen('mine', 'a').write('x')\nprint(3)"),
        "write_hook_undone": (THREE, UNDO_HOOK + f"open({str(outside / 'escaped')!r}, 'w').write('x')\nprint(3)"),
        "symlink_then_000": (THREE, f"import os\nos.symlink({key!r}, 'link')\nos.chmod('.', 0)\nprint(3)"),
        "fork": (THREE, "import os\nos.fork()\nprint(3)"),
        "exec": (THREE, "import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'print(3)'])"),
        "socket": (THREE, "import socket\nsocket.socket()\nprint(3)"),
        "signal_parent": (THREE, f"import os\nos.kill({os.getpid()}, 0)\nprint(3)"),
        "loops": (THREE, "while True:\n    pass"),
    }


def files(paths: dict[str, Path], outside: Path) -> dict[str, object]:
    """What an attack could change outside: each planted file's mode, owner, times, content and xattrs."""
    state = {
        name: [*(lambda s: (s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns, s.st_nlink))(path.stat()), path.read_text()]
        for name, path in paths.items()
    }
    state["xattrs"] = os.listxattr(paths["plain"])
    state["listing"] = sorted(str(path.relative_to(outside)) for path in outside.rglob("*"))
    return state


def cleanup(outside: Path, key: Path) -> dict[str, object]:
    """What a program may leave in its folder where the kernel lets it (an ordinary user's fallback): a link
    to a private file, folders of mode 000, folders 1500 deep. Removing it must neither follow the link nor fail."""

    mode = key.stat().st_mode
    folder = outside / "left-by-a-program"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "a" / "b" / "link").symlink_to(key)
    (folder / "link-to-folder").symlink_to(outside)
    descriptor = os.open(folder, os.O_RDONLY)
    for _ in range(1500):  # deeper than Python's recursion limit, and than PATH_MAX as one path
        os.mkdir("deeper", dir_fd=descriptor)
        descriptor = (os.open("deeper", os.O_RDONLY, dir_fd=descriptor), os.close(descriptor))[0]
    os.close(descriptor)
    for path in (folder / "a" / "b", folder / "a", folder):
        path.chmod(0)
    _remove_tree(folder)
    return {
        "removed": not folder.exists(),
        "key_mode_kept": key.stat().st_mode == mode,
        "outside_kept": outside.exists(),
    }


@contextlib.contextmanager
def private_scratch():
    """Make the verifier's scratch folders in a new folder of their own (uid 65534 may pass through it)."""
    parent, previous = Path(tempfile.mkdtemp(prefix="nsa-battery-")), tempfile.tempdir
    parent.chmod(0o711)
    tempfile.tempdir = str(parent)
    try:
        yield parent
    finally:
        tempfile.tempdir = previous
        _remove_tree(parent)


def battery(outside: Path) -> dict[str, object]:
    """Plant, attack in one verify call, and report: statuses, the files before and after, scratch left."""
    paths = plant(outside)
    named = attacks(paths, outside)
    before = files(paths, outside)
    verifier = CodeVerifier(timeout_s=2.0, memory_mb=256, output_mb=4, disk_mb=DISK_MB, workers=2)
    references = [reference for reference, _ in named.values()]
    with private_scratch() as parent:  # other tests verify code at the same time: count only this call's folders
        outcomes = verifier.verify(references, [f"```python\n{program}\n```" for _, program in named.values()])
        left = list(parent.glob("nsa-code-*"))
    statuses = {name: outcome.status for name, outcome in zip(named, outcomes)}
    report = sandbox_report(checked_limits(verifier._limits))
    after = files(paths, outside)
    return {"statuses": statuses, "before": before, "after": after, "left": sorted(map(str, left))} | {
        "report": report,
        "cleanup": cleanup(outside, paths["key"]),
    }


if __name__ == "__main__":
    print(json.dumps(battery(Path(sys.argv[1]))))
