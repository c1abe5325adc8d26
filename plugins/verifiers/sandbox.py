"""The code sandbox: one Python program, one test, in a confined ``python -I`` subprocess (for CodeVerifier).

A helper module of ``code.py``, not a plugin. ``execute`` runs a program once; its exit code says how it ended
(``EXIT_MEMORY``, ``EXIT_REFUSED``, a signal, or the program's own), and ``code.py`` turns that into a status.

Each run is ``python -I -B`` (isolated mode), with a clean environment (no inherited secrets), a fresh private
folder as cwd (deleted afterwards) and its own session. In the child, a small launcher sets up, before the
program runs:

1. rlimits, soft = hard: CPU seconds, address space, file size, no core files.
2. Network: a network namespace of its own, with no interface up (``unshare(CLONE_NEWNET)``: directly
   with CAP_SYS_ADMIN, otherwise inside a new user namespace); seccomp also refuses ``socket()``.
3. Processes: seccomp refuses fork, vfork and clone without CLONE_THREAD (threads work), exec, ptrace, and
   kill/tgkill/pidfd signals aimed at other processes. RLIMIT_NPROC (64 tasks) binds where the kernel
   counts this sandbox alone or nobody's tasks: an unprivileged user's namespace, or after the root drop
   (it never binds uid 0, and elsewhere it would count all of the user's processes).
4. Files: Landlock refuses writes (creating, removing, truncating, renaming, linking) outside the folder,
   except to its stdout, stderr and /dev/null.
5. No root: a child started by root becomes uid/gid 65534 with no capabilities. Only where the interpreter
   cannot be read without it (installed under /root, mode 0700) does it keep CAP_DAC_READ_SEARCH, which
   reads (never writes) any file; ``sandbox_report()["user"]`` says which.
6. An audit hook (``sys.addaudithook``) refuses the same in Python, so that such a program scores
   ``blocked``, and also ctypes library loading and raw memory, cffi, other processes' /proc, and
   directory handles outside the folder. Where Landlock is missing it is the only file layer, so it also
   checks what Landlock leaves alone or its events do not show: chmod, chown, utime and xattrs (a
   descriptor counts as the file /proc/self/fd names), ``os.open`` with ``dir_fd`` (checked where it
   points), sqlite3 databases (and ATTACH), and dbm (its C modules are withheld: dbm.dumb writes through
   ``open``). It is no security boundary by itself (Python says so): a program that digs out what it
   replaced can undo it.

The parent kills the run's whole process group on timeout and after every run. Where a kernel layer is
missing (no user namespaces or Landlock in an unprivileged container; seccomp on architectures other
than x86_64 and aarch64) the others still hold: ``sandbox_report()`` says what is in force, and
``checked_limits()`` prints a line when a layer rests on the audit hook alone. Bad programs never hang or
crash the verifier: each run is bounded, and the parent only waits for it and reads its files.

The launcher is the ``_sandbox_*`` functions at the end of this module: ``_launcher_source()`` sends their
source to the child, so they run there, never here.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

# The launcher's own exit codes; a program exiting with them itself only scores itself 0.
EXIT_MEMORY = 101
EXIT_REFUSED = 102
# Wall-clock grace on top of timeout_s for the interpreter to start (it is not the program's time).
_STARTUP_S = 1.0
# Tasks (processes and threads) a sandboxed program may have where RLIMIT_NPROC binds.
_MAX_TASKS = 64
_NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    """What one sandboxed run may use, and which layers to attempt (all of them, except in tests of one layer)."""

    timeout_s: float
    memory_mb: int
    output_mb: int
    namespaces: bool = True
    drop_root: bool = True
    filters: bool = True  # seccomp and Landlock: the kernel's process, socket and file refusals
    audit_hook: bool = True


def execute(program: str, given: str, mode: str, fn_name: str | None, limits: Limits) -> tuple[int, bool, str, str]:
    """One sandboxed run in a fresh folder: (return code, whether the parent stopped it, stdout, stderr).

    ``mode`` is ``stdin`` (run the program on ``given``), ``call`` (call ``fn_name`` on the JSON arguments in
    ``given``, its JSON result on stdout) or ``report`` (print which layers are in force, run nothing).
    """
    with _scratch(limits) as scratch:
        (scratch / "program.py").write_text(program, encoding="utf-8")
        (scratch / "stdin").write_text(given, encoding="utf-8")
        returncode, timed_out = _launch(scratch, mode, fn_name, limits)
        stdout, stderr = ((scratch / name).read_bytes().decode(errors="replace") for name in ("stdout", "stderr"))
    return returncode, timed_out, stdout, stderr


@contextlib.contextmanager
def _scratch(limits: Limits):
    """A private folder for one run (program, stdin, stdout, stderr) with ``work/``, the program's cwd."""
    base = Path(tempfile.mkdtemp(prefix="nsa-code-"))
    try:
        base.chmod(0o711)  # the program (maybe uid 65534) may pass through to work/, not list or read the rest
        (base / "work").mkdir(mode=0o700)
        if os.geteuid() == 0 and limits.drop_root:
            os.chown(base / "work", _NOBODY, _NOBODY)
        yield base
    finally:
        _remove_tree(base)


def _remove_tree(path: Path) -> None:
    """Delete a run's folder even where the program took permissions away from its own files."""

    def retry(function, failed: str, _error: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
            function(failed)

    shutil.rmtree(path, onerror=retry)


def _config(scratch: Path, mode: str, fn_name: str | None, limits: Limits) -> dict:
    """What the launcher reads from its argument: the program, the mode, the limits and the layers to set up."""
    return {
        "program": str(scratch / "program.py"),
        "mode": mode,
        "fn_name": fn_name,
        "cpu_s": math.ceil(limits.timeout_s) + 1,
        "memory_bytes": limits.memory_mb << 20,
        "output_bytes": limits.output_mb << 20,
        "namespaces": limits.namespaces,
        "drop_root": limits.drop_root,
        "filters": limits.filters,
        "audit_hook": limits.audit_hook,
    }


def _launch(scratch: Path, mode: str, fn_name: str | None, limits: Limits) -> tuple[int, bool]:
    """Run the launcher on ``scratch``; (return code, whether the parent had to stop it)."""
    config = _config(scratch, mode, fn_name, limits)
    streams = [open(scratch / name, access) for name, access in (("stdin", "rb"), ("stdout", "wb"), ("stderr", "wb"))]
    try:
        if os.geteuid() == 0 and limits.drop_root:
            for stream in streams:  # so that reopening them (/dev/stdout) works for the dropped user
                os.fchown(stream.fileno(), _NOBODY, _NOBODY)
        process = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _launcher_source(), json.dumps(config)],
            stdin=streams[0],
            stdout=streams[1],
            stderr=streams[2],
            cwd=scratch / "work",
            env=_clean_env(scratch / "work"),
            start_new_session=True,  # its own process group: one killpg reaches everything it started
        )
    finally:
        for stream in streams:
            stream.close()
    return _wait(process, limits.timeout_s + _STARTUP_S)


def _wait(process: subprocess.Popen, limit_s: float) -> tuple[int, bool]:
    timed_out = False
    try:
        process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # Always, also after a normal exit: nothing the run started may outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode, timed_out


def _clean_env(home: Path) -> dict[str, str]:
    """No inherited variables (API keys, tokens); one thread per numeric library."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(home),  # tempfile works, inside the folder
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def sandbox_report(limits: Limits | None = None) -> dict[str, str]:
    """What the sandbox enforces on this machine, by layer: network, processes, files, user."""
    returncode, _, stdout, stderr = execute("", "", "report", None, limits or Limits(5.0, 512, 1))
    if returncode != 0:
        raise RuntimeError(f"the code sandbox failed to start (exit {returncode}): {stderr.strip()[-500:]}")
    return json.loads(stdout)


@functools.cache
def checked_limits(limits: Limits) -> Limits:
    """The limits to run with here: probe the sandbox once per process, and say when a layer is missing.

    Where the dropped user cannot start or read the interpreter's files, the child keeps its uid.
    """
    try:
        report = sandbox_report(limits)
    except (RuntimeError, OSError):  # e.g. root without CAP_SETUID or CAP_CHOWN, in some containers
        report = {}
    if report.get("imports") != "ok" and limits.drop_root:
        limits = replace(limits, drop_root=False)
        report = sandbox_report(limits)
    weak = [f"{layer}: {report[layer]}" for layer in ("network", "processes", "files") if "+" not in report[layer]]
    if weak:
        print(f"nsa: code sandbox: kernel layers missing on this machine ({'; '.join(weak)})", file=sys.stderr)
    return limits


# ---------------------------------------------------------------------------------------------------------
# The launcher: the functions below run in the child (`python -I -c`), not here. Their source is sent as
# is, so each imports what it needs and uses nothing else from this module but the constants that
# _launcher_source() puts first.


class _Refused(PermissionError):
    """Raised by the sandbox's audit hook for an operation it refuses."""


def _sandbox_main() -> None:
    """Confine this process, then run the program; the exit code says how it ended."""
    import json
    import os
    import sys

    config = json.loads(sys.argv[1])
    with open(config["program"], encoding="utf-8", errors="replace") as file:  # before the uid drop
        source = file.read()
    _sandbox_limit(config)
    report = _sandbox_isolate(config)
    if config["audit_hook"]:
        _sandbox_guard(os.getcwd())
        layers = ("network", "processes", "files")
        report |= {key: f"{report[key]} + audit hook".removeprefix("none + ") for key in layers}
    if config["mode"] == "report":
        report["imports"] = _sandbox_can_import()
        print(json.dumps(report))
        return
    sys.exit(_sandbox_run(source, config["fn_name"]))


def _sandbox_limit(config: dict) -> None:
    """Kernel limits; soft = hard, so the program cannot raise them again."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; past the size limit, stop instead
    for name, value in (
        ("RLIMIT_CPU", config["cpu_s"]),  # SIGKILL once past it
        ("RLIMIT_AS", config["memory_bytes"]),  # allocations beyond it fail: MemoryError
        ("RLIMIT_FSIZE", config["output_bytes"]),  # stdout, stderr and files: SIGXFSZ beyond it
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))


def _sandbox_isolate(config: dict) -> dict:
    """The kernel's layers: network namespace, no root, RLIMIT_NPROC where it binds, seccomp. Says what is in force."""
    import ctypes
    import gc
    import os
    import resource

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid binary hands privileges back (and seccomp needs it)
    root, newuser, newnet = os.geteuid() == 0, 0x10000000, 0x40000000
    network = "network namespace" if config["namespaces"] and libc.unshare(newnet) == 0 else ""
    dropped = root and config["drop_root"]
    capabilities = _sandbox_drop_root(libc) if dropped else ""
    user = f"{os.getuid()}" + (f" ({capabilities})" if dropped else "")  # ours, seen from outside
    if config["namespaces"] and not network and libc.unshare(newuser | newnet) == 0:
        network = "user + network namespace"  # the unprivileged way: a user namespace owns the new one
    processes = []
    if dropped or (network.startswith("user") and not root):
        # Now it counts this sandbox's tasks alone (in its user namespace) or nobody's; uid 0 is always exempt.
        resource.setrlimit(resource.RLIMIT_NPROC, (_MAX_TASKS, _MAX_TASKS))
        processes.append(f"RLIMIT_NPROC {_MAX_TASKS}")
    files = _sandbox_landlock(libc, os.getcwd()) if config["filters"] else ""
    seccomp = _sandbox_seccomp(libc) if config["filters"] else ""
    del libc  # ctypes stays imported (numpy needs it), but the program gets no handle of ours
    gc.collect()
    return {
        "network": " + ".join(filter(None, [network, seccomp and "seccomp (no sockets)"])) or "none",
        "processes": " + ".join(filter(None, [seccomp and "seccomp (no fork/exec)", *processes])) or "none",
        "files": files or "none",
        "user": user,
    }


def _sandbox_drop_root(libc) -> str:
    """Become uid/gid 65534 with no capabilities; where the interpreter's folders are unreadable then (under
    /root, mode 0700), keep CAP_DAC_READ_SEARCH so that imports work: it reads (never writes) any file."""
    import os
    import sys

    folders = [folder for folder in sys.path if os.path.isdir(folder)]  # as root, which sees them all
    libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep the permitted set across setuid
    os.setgroups([])
    os.setgid(_NOBODY)
    os.setuid(_NOBODY)
    libc.prctl(8, 0, 0, 0, 0)
    read_search = 1 << 2
    _sandbox_capset(libc, 0, read_search)  # none in effect; CAP_DAC_READ_SEARCH may come back once
    try:
        for folder in folders:
            os.listdir(folder)
    except OSError:
        _sandbox_capset(libc, read_search, read_search)
        return "CAP_DAC_READ_SEARCH only: the interpreter is unreadable without it"
    _sandbox_capset(libc, 0, 0)
    return "no capabilities"


def _sandbox_capset(libc, effective: int, permitted: int) -> None:
    import ctypes

    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)(effective, permitted, 0, 0, 0, 0)  # effective, permitted, inheritable
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _sandbox_landlock(libc, folder: str) -> str:
    """Landlock: the kernel refuses writes (creating, removing, truncating, linking) outside ``folder``,
    except to this process's stdout and stderr and /dev/null. "" where the kernel has no Landlock."""
    import os
    import struct

    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return ""
    file_rights = (1 << 1) | ((1 << 14) if abi >= 3 else 0)  # WRITE_FILE, TRUNCATE
    # and REMOVE_DIR, REMOVE_FILE, MAKE_* (bits 4-12), REFER (renames and links across folders)
    rights = file_rights | sum(1 << bit for bit in range(4, 13)) | ((1 << 13) if abi >= 2 else 0)
    ruleset = libc.syscall(444, struct.pack("<Q", rights), 8, 0)
    if ruleset < 0:
        return ""
    try:
        for path, allowed in ((folder, rights), ("/proc/self/fd/1", file_rights), ("/proc/self/fd/2", file_rights)):
            _sandbox_landlock_rule(libc, ruleset, path, allowed)
        _sandbox_landlock_rule(libc, ruleset, "/dev/null", file_rights)
        return "landlock" if libc.syscall(446, ruleset, 0) == 0 else ""  # landlock_restrict_self
    finally:
        os.close(ruleset)


def _sandbox_landlock_rule(libc, ruleset: int, path: str, allowed: int) -> None:
    """Allow ``allowed`` beneath ``path`` (a folder, or a single file)."""
    import os
    import struct

    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        libc.syscall(445, ruleset, 1, struct.pack("<Qi", allowed, fd), 0)  # LANDLOCK_RULE_PATH_BENEATH
    finally:
        os.close(fd)


def _sandbox_seccomp(libc) -> str:
    """A seccomp filter: the kernel refuses new processes (threads are fine), exec, sockets, and signals or
    tracing aimed at other processes, whatever the program does to the audit hook. "" where unavailable."""
    import ctypes
    import os
    import platform
    import struct

    # audit arch; refused: socket, socketpair, (fork, vfork,) execve, ptrace, rt_sigqueueinfo, tkill,
    # rt_tgsigqueueinfo, process_vm_readv/writev, execveat, pidfd_send_signal, io_uring_setup (its requests
    # bypass seccomp), pidfd_getfd; then clone, kill, tgkill, allowed only as checked below
    tables = {
        "x86_64": (0xC000003E, (41, 53, 57, 58, 59, 101, 129, 200, 297, 310, 311, 322, 424, 425, 438), 56, 62, 234),
        "aarch64": (0xC00000B7, (117, 130, 138, 198, 199, 221, 240, 270, 271, 281, 424, 425, 438), 220, 129, 131),
    }
    if platform.machine() not in tables:
        return ""
    arch, denied, clone, kill, tgkill = tables[platform.machine()]
    allow, eperm, enosys = 0x7FFF0000, 0x00050001, 0x00050026
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    # (code, jump if true, jump if false, k); seccomp_data: nr at 0, arch at 4, low word of args[0] at 16
    program = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, eperm), (ld, 0, 0, 0), (jge, 0, 1, 0x40000000)]
    program += [(ret, 0, 0, eperm), (jeq, 0, 1, 435), (ret, 0, 0, enosys)]  # x32 calls; clone3 (glibc falls back)
    for number, test, value in ((clone, jset, 0x10000), (kill, jeq, os.getpid()), (tgkill, jeq, os.getpid())):
        # clone only with CLONE_THREAD; kill and tgkill only at this process
        program += [(jeq, 0, 4, number), (ld, 0, 0, 16), (test, 0, 1, value), (ret, 0, 0, allow), (ret, 0, 0, eperm)]
    program += [instruction for number in denied for instruction in ((jeq, 0, 1, number), (ret, 0, 0, eperm))]
    program.append((ret, 0, 0, allow))

    class Filter(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *instruction) for instruction in program))
    installed = libc.prctl(22, 2, ctypes.byref(Filter(len(program), ctypes.addressof(code))), 0, 0) == 0
    return "seccomp" if installed else ""


def _sandbox_guard(folder: str) -> None:
    """Install the audit hook. A refusal raises _Refused in the program, at the call that tried."""
    import sys

    _sandbox_disarm()
    check_path = _sandbox_path_check(folder)
    _sandbox_wrap_open(check_path)
    _sandbox_wrap_sqlite()
    denied = frozenset(
        "os.fork os.forkpty os.exec os.posix_spawn os.spawn os.system os.startfile subprocess.Popen os.kill "
        "os.killpg ctypes.dlopen ctypes.dlsym ctypes.dlsym/handle ctypes.call_function ctypes.cdata "
        "ctypes.string_at ctypes.wstring_at ctypes.PyObj_FromPtr gc.get_objects gc.get_referrers "
        "gc.get_referents sqlite3.enable_load_extension sqlite3.load_extension".split()
    )
    # Modules the program gets only as the launcher left them (cached, disarmed): a re-import is refused.
    modules = frozenset({"cffi", "_cffi_backend", "_posixsubprocess", "posix", "_signal"})

    def hook(event: str, args: tuple) -> None:
        if event in denied or event.startswith("socket."):
            raise _Refused(f"refused by the nsa sandbox: {event}")
        if event == "import" and args[0].partition(".")[0] in modules:
            raise _Refused(f"refused by the nsa sandbox: import {args[0]}")
        if event == "import" and args[0] in ("_gdbm", "_dbm"):
            # They write in C, unseen here; as if not installed, dbm falls back to dbm.dumb, which uses open().
            raise ModuleNotFoundError(f"{args[0]} is withheld by the nsa sandbox")
        check_path(event, args)

    sys.addaudithook(hook)


def _sandbox_disarm() -> None:
    """Replace the process, signal, memory and file-node calls that raise no audit event with refusals."""
    import _posixsubprocess  # cached now, so `import subprocess` still works, without its fork_exec
    import _signal
    import ctypes
    import os
    import posix
    import signal

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise _Refused("refused by the nsa sandbox")

    for module, names in (
        (_posixsubprocess, ("fork_exec",)),
        (posix, ("mkfifo", "mknod", "pidfd_open")),
        (os, ("mkfifo", "mknod", "pidfd_open")),
        (_signal, ("pidfd_send_signal",)),
        (signal, ("pidfd_send_signal",)),
        (ctypes, ("memmove", "memset", "cast", "CFUNCTYPE", "PYFUNCTYPE")),  # raw memory and function pointers
    ):
        for name in names:
            if hasattr(module, name):
                setattr(module, name, refuse)


def _sandbox_path_check(folder: str):
    """The file part of the hook: writes (and directory handles, other processes' /proc) only inside ``folder``."""
    import os
    import urllib.parse  # noqa: F401 (for _sandbox_database, which runs inside the hook: no import there)

    root = os.path.realpath(folder)

    def inside(path: object, dir_fd: int | None = None) -> bool:
        real = _sandbox_real_path(path, None if dir_fd == -1 else dir_fd)  # the events say -1 for no dir_fd
        return real is not None and (real == root or real.startswith(root + os.sep))

    def refused(event: str, args: tuple) -> bool:
        if event in _SANDBOX_PATH_EVENTS:
            pairs = _SANDBOX_PATH_EVENTS[event]
            return not all(inside(args[path], None if dir_fd is None else args[dir_fd]) for path, dir_fd in pairs)
        if event == "sqlite3.connect":
            database = _sandbox_database(args[0])
            return database is not None and not inside(database)
        return event == "open" and _sandbox_open_refused(args, inside)

    def check(event: str, args: tuple) -> None:
        if refused(event, args):
            raise _Refused(f"refused by the nsa sandbox: {event} {args[0]!r}")

    return check


def _sandbox_open_refused(args: tuple, inside) -> bool:
    """Whether to refuse an ``open`` event: outside the folder, a write, a directory or another process's /proc."""
    import os

    if isinstance(args[0], int) or os.fsdecode(args[0]) in _SANDBOX_STREAMS or inside(args[0]):
        return False  # a descriptor already open (open(fd)): nothing new is reached
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real, mode, flags = os.path.realpath(os.fsdecode(args[0])), args[1] or "", args[2] or 0
    other_process = real.startswith("/proc/") and real.split("/")[2].isdigit()
    other_process = other_process and not real.startswith(f"/proc/{os.getpid()}")
    # a directory descriptor outside: a way past path checks for calls that raise no event (fchdir, scandir)
    return bool(flags & writes) or any(c in mode for c in "wax+") or other_process or os.path.isdir(real)


def _sandbox_real_path(path: object, dir_fd: int | None = None) -> str | None:
    """The real path a call reaches: a descriptor's from /proc/self/fd, a dir_fd-relative path's from the folder
    that dir_fd is. None for a closed descriptor or one that is no file in a folder (a pipe, a socket)."""
    import os

    try:
        if isinstance(path, int):
            path = os.readlink(f"/proc/self/fd/{path}")
            if not path.startswith("/"):  # "pipe:[...]", "socket:[...]", "anon_inode:[...]"
                return None
        elif dir_fd is not None:
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), os.fsdecode(path))
        return os.path.realpath(os.fsdecode(path))
    except OSError:
        return None


def _sandbox_wrap_open(check) -> None:
    """``os.open``'s audit event carries no dir_fd: check a dir_fd-relative open again, where it points."""
    import os
    import posix

    plain_open = posix.open

    def open(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is not None:
            check("open", (_sandbox_real_path(path, dir_fd) or "/", None, flags))  # None: refused, as "/" is
        return plain_open(path, flags, mode, dir_fd=dir_fd)

    os.open = posix.open = open


def _sandbox_wrap_sqlite() -> None:
    """sqlite3 connections allow no ATTACH (nor VACUUM INTO): SQL names files there that no audit event shows.

    Done here, not in the hook: the connection's own audit event comes before it can be configured.
    """
    try:
        import _sqlite3
        import sqlite3
    except ImportError:
        return
    plain_connect = sqlite3.connect

    def connect(*args, **kwargs):
        connection = plain_connect(*args, **kwargs)
        connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        return connection

    _sqlite3.connect = sqlite3.connect = sqlite3.dbapi2.connect = connect


def _sandbox_database(name: object) -> str | None:
    """The file an sqlite3 database name opens; None for none (":memory:", and "": a temporary file in TMPDIR).

    A "file:" URI is read as a URI (its path, percent-decoded) whether or not ``uri=True``: the event omits it.
    """
    import os
    from urllib.parse import unquote_to_bytes

    name = os.fsdecode(name)
    if name[:5].lower() == "file:":
        # the bytes SQLite decodes, back to a str as os would (not UTF-8 only): so realpath sees the same names
        name = os.fsdecode(unquote_to_bytes(name[5:].partition("?")[0].partition("#")[0]))
        if name.startswith("//"):  # file://host/path
            name = "/" + name[2:].partition("/")[2]
    return None if name in ("", ":memory:") else name


def _sandbox_can_import() -> str:
    """Whether the (maybe dropped) user can still import standard modules not loaded yet."""
    try:
        import fractions  # noqa: F401
    except ImportError as err:
        return f"failed: {err}"
    return "ok"


def _sandbox_run(source: str, fn_name: str | None) -> int:
    """Run the program after LiveCodeBench's imports: on stdin as ``__main__``, or for functional tests as
    ``tmp_sol`` (as LiveCodeBench does: a ``__main__`` block must not eat the JSON arguments on stdin), then
    call ``fn_name`` and write its JSON result to stdout."""
    import os
    import sys
    import traceback
    import types

    module = types.ModuleType("tmp_sol" if fn_name else "__main__")
    module.__file__ = "solution.py"
    sys.modules[module.__name__], sys.argv = module, ["solution.py"]
    result_fd = None
    if fn_name:
        # The program's own prints go to stderr; only the result reaches stdout.
        result_fd = os.dup(1)
        os.dup2(2, 1)
    try:
        exec(_SANDBOX_IMPORTS, module.__dict__)
        exec(compile(source, "solution.py", "exec"), module.__dict__)
        if fn_name:
            _sandbox_call(module, fn_name, result_fd)
    except SystemExit as done:
        return 0 if done.code is None else done.code if isinstance(done.code, int) else 1
    except MemoryError:
        return EXIT_MEMORY
    except _Refused:
        traceback.print_exc()
        return EXIT_REFUSED
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _sandbox_call(module, fn_name: str, result_fd: int) -> None:
    """Call the solution on stdin's JSON arguments (one per line); serialise the result here, in the sandbox."""
    import json
    import os
    import sys

    args = [json.loads(line) for line in sys.stdin.read().split("\n") if line.strip()]
    owner = module.Solution() if hasattr(module, "Solution") else module
    # JSON here means an object cannot fake equality: only its serialised value is compared, in the parent.
    text = json.dumps(getattr(owner, fn_name)(*args)).encode()
    while text:
        text = text[os.write(result_fd, text) :]


# event -> the (path, dir_fd) argument indexes of each path that must lie inside the folder, where the dir_fd
# (or a path that is a descriptor) says where it is
_SANDBOX_PATH_EVENTS = {
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.link": ((0, 2), (1, 3)),
    "os.mkdir": ((0, 2),),
    "os.remove": ((0, 1),),
    "os.rename": ((0, 2), (1, 3)),
    "os.rmdir": ((0, 1),),
    "os.symlink": ((1, 2),),
    "os.truncate": ((0, None),),
    "os.utime": ((0, 3),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
}
_SANDBOX_STREAMS = ("/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/null")
# LiveCodeBench's import_string (lcb_runner/evaluation/testing_util.py), run before every program as it does:
# its answers use these names (List, cache, inf, heappush, ...) without importing them, and recurse deep.
_LCB_MODULES = ["string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random"]
_LCB_MODULES += ["statistics", "itertools", "functools", "operator", "io", "sys", "json"]
_SANDBOX_IMPORTS = "".join(
    [f"from {name} import *\n" for name in [*_LCB_MODULES, "builtins", "typing"]]
    + [f"import {name}\n" for name in _LCB_MODULES]
    + ["sys.setrecursionlimit(50000)\n"]
)


@functools.cache
def _launcher_source() -> str:
    parts = [
        _Refused,
        _sandbox_main,
        _sandbox_limit,
        _sandbox_isolate,
        _sandbox_drop_root,
        _sandbox_capset,
        _sandbox_landlock,
        _sandbox_landlock_rule,
        _sandbox_seccomp,
        _sandbox_guard,
        _sandbox_disarm,
        _sandbox_path_check,
        _sandbox_open_refused,
        _sandbox_real_path,
        _sandbox_wrap_open,
        _sandbox_wrap_sqlite,
        _sandbox_database,
        _sandbox_can_import,
        _sandbox_run,
        _sandbox_call,
    ]
    body = "\n\n".join(inspect.getsource(part) for part in parts)
    constants = {
        "_SANDBOX_IMPORTS": _SANDBOX_IMPORTS,
        "_SANDBOX_PATH_EVENTS": _SANDBOX_PATH_EVENTS,
        "_SANDBOX_STREAMS": _SANDBOX_STREAMS,
        "EXIT_MEMORY": EXIT_MEMORY,
        "EXIT_REFUSED": EXIT_REFUSED,
        "_MAX_TASKS": _MAX_TASKS,
        "_NOBODY": _NOBODY,
    }
    values = "\n".join(f"{name} = {value!r}" for name, value in constants.items())
    return f"from __future__ import annotations\n\n{values}\n\n{body}\n\n_sandbox_main()\n"
