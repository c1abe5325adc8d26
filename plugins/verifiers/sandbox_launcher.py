"""The code sandbox's launcher: the child's side of ``sandbox.py``. It confines its own process, then runs the program.

``sandbox.py`` runs it as ``python -I -S -B sandbox_launcher.py CONFIG`` (inside bubblewrap where the machine has
it), with the program's stdin, stdout and stderr already open, in the program's folder. It uses the standard
library alone and imports nothing of nsa: under bubblewrap nothing of nsa is visible. In order:

1. Resources: ``oom_score_adj`` 1000 (the kernel's OOM killer takes this process before the trainer), rlimits
   with soft = hard (CPU seconds, address space, file size, 64 open files, no core files).
2. Network: a network namespace with no interface up (bubblewrap's, or ``unshare`` here), and seccomp refuses
   ``socket()``.
3. No root: a launcher started as root becomes uid/gid 65534 with no capabilities, or stops (``EXIT_SETUP``);
   it never goes on as root.
4. Files: Landlock lets the program read only the interpreter, its standard library, the allowed packages and
   the system's shared libraries (``readable``, less ``hidden``: the interpreter's own site-packages), and
   write only in its folder, its stdout and stderr and /dev/null.
5. Seccomp: no new processes (threads are fine), exec, ptrace, signals, limits, priorities or SIGIO owners
   aimed at other processes, namespaces, memfd or System V and POSIX IPC (kernel memory that RLIMIT_AS does
   not count), chmod, chown, utime, extended attributes, hard links, keyrings, BPF or perf events, whatever
   the program does to the audit hook.
6. An audit hook refuses the same in Python, so that such a program scores ``blocked`` rather than
   ``runtime_error``. It is no security boundary (a program can undo it): the kernel layers above are.

The exit code says how a run ended: the program's own, ``EXIT_MEMORY``, ``EXIT_REFUSED`` or ``EXIT_SETUP``.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import json
import os
import platform
import resource
import signal
import struct
import sys
import traceback
import types

# The launcher's own exit codes; a program exiting with them itself only scores itself 0.
EXIT_MEMORY = 101
EXIT_REFUSED = 102
EXIT_SETUP = 103
MAX_TASKS = 64  # tasks (processes and threads) where RLIMIT_NPROC binds
MAX_FILES = 64  # open descriptors
NOBODY = 65534


class Refused(PermissionError):
    """Raised by the sandbox's audit hook for an operation it refuses."""


class SetupError(RuntimeError):
    """A layer that was asked for could not be set up: the program must not run."""


def main(argv: list[str]) -> int:
    """Confine this process, then run the program; the exit code says how it ended."""
    config = json.loads(argv[1])
    with open(config["program"], encoding="utf-8", errors="replace") as file:  # before any layer
        source = file.read()
    try:
        limit(config)
        report = isolate(config)
    except (SetupError, OSError) as error:
        print(f"cannot confine itself: {error}", file=sys.stderr)
        return EXIT_SETUP
    if config["audit_hook"]:
        guard(os.getcwd(), config["readable"])
        report |= {key: f"{report[key]} + audit hook".removeprefix("none + ") for key in ("network", "processes")}
        report["files"] = f"{report['files']} + audit hook".removeprefix("none + ")
    sys.meta_path.append(Packages(config["packages"]))
    if config["mode"] == "report":
        report["imports"] = can_import(config["packages"])
        print(json.dumps(report))
        return 0
    return run(source, config["fn_name"])


def limit(config: dict) -> None:
    """The OOM killer's first pick, and kernel limits with soft = hard, so the program cannot raise them again."""
    with open("/proc/self/oom_score_adj", "w") as file:  # raising it needs no privilege
        file.write("1000")
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; past the size limit, stop instead
    for name, value in (
        ("RLIMIT_CPU", config["cpu_s"]),  # SIGKILL once past it
        ("RLIMIT_AS", config["memory_bytes"]),  # allocations beyond it fail: MemoryError
        ("RLIMIT_FSIZE", config["output_bytes"]),  # stdout, stderr and each file: SIGXFSZ beyond it
        ("RLIMIT_NOFILE", MAX_FILES),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))


def isolate(config: dict) -> dict:
    """The kernel's layers: network namespace, no root, RLIMIT_NPROC where it binds, Landlock, seccomp."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: no setuid binary hands privileges back
        raise SetupError("PR_SET_NO_NEW_PRIVS failed")
    root, newuser, newnet = os.geteuid() == 0, 0x10000000, 0x40000000
    network = "network namespace (bubblewrap)" if config["bubblewrap"] else ""
    if config["namespaces"] and not network and libc.unshare(newnet) == 0:
        network = "network namespace"
    dropped = root and config["drop_root"]
    if dropped:
        drop_root()
    if config["namespaces"] and not network and libc.unshare(newuser | newnet) == 0:
        network = "user + network namespace"  # the unprivileged way: a user namespace owns the new one
    processes = []
    if network.startswith("user") and not root:
        # It counts this sandbox's tasks alone (in its own user namespace). Never for uid 65534, which all
        # sandboxes of a root verifier share: one would take the others' threads. Seccomp stops new processes,
        # and RLIMIT_AS threads (each stack counts).
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_TASKS, MAX_TASKS))
        processes.append(f"RLIMIT_NPROC {MAX_TASKS}")
    files = landlock(libc, os.getcwd(), config["readable"], config["hidden"]) if config["filters"] else ""
    seccomp = install_seccomp(libc) if config["filters"] else ""
    missing = [layer for layer in config["required"] if layer not in f"{files} {seccomp}"]
    if missing:  # the probe had them: this run must not go on with less
        raise SetupError(f"{' and '.join(missing)} could not be set up")
    del libc  # ctypes stays imported (numpy needs it), but the program gets no handle of ours
    gc.collect()
    folder = f"tmpfs of {config['disk_bytes'] >> 20} MiB (bubblewrap)" if config["bubblewrap"] else "on disk"
    return {
        "network": " + ".join(filter(None, [network, seccomp and "seccomp (no sockets)"])) or "none",
        "processes": " + ".join(filter(None, [seccomp and "seccomp (no fork/exec)", *processes])) or "none",
        "files": " + ".join(filter(None, [config["bubblewrap"] and "bubblewrap (read-only binds)", files])) or "none",
        "metadata": seccomp and "seccomp (no chmod/chown/utime/xattr/link)" or "none",
        "memory": " + ".join(filter(None, ["RLIMIT_AS", seccomp and "seccomp (no memfd/shm)", folder])),
        "user": f"{os.getuid()}" + (" (no capabilities)" if dropped else ""),
    }


def drop_root() -> None:
    """Become uid/gid 65534 with no capabilities, handing it the folder first; raise if anything is kept."""
    os.chown(".", NOBODY, NOBODY)  # the program's folder, its cwd
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)  # without PR_SET_KEEPCAPS this clears the permitted and effective sets
    with open("/proc/self/status") as file:
        status = dict(line.split(":\t", 1) for line in file.read().splitlines() if ":\t" in line)
    kept = {name: status[name].strip() for name in ("CapPrm", "CapEff", "CapAmb") if int(status[name], 16)}
    if os.getuid() != NOBODY or os.geteuid() != NOBODY or kept:
        raise SetupError(f"could not drop root: uid {os.getuid()}, capabilities {kept}")


def landlock(libc, folder: str, readable: list[str], hidden: list[str]) -> str:
    """Landlock: reads only beneath ``readable`` less ``hidden``, writes only in ``folder``. "" without Landlock."""
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return ""
    read = (1 << 0) | (1 << 2) | (1 << 3)  # EXECUTE, READ_FILE, READ_DIR
    write = (1 << 1) | ((1 << 14) if abi >= 3 else 0)  # WRITE_FILE, TRUNCATE
    # and REMOVE_DIR, REMOVE_FILE, MAKE_* (bits 4-12), REFER (renames and links across folders)
    every = read | write | sum(1 << bit for bit in range(4, 13)) | ((1 << 13) if abi >= 2 else 0)
    ruleset = libc.syscall(444, struct.pack("<Q", every), 8, 0)
    if ruleset < 0:
        return ""
    try:
        rules = [(folder, every), ("/dev/null", read | write), ("/dev/urandom", read), ("/proc/self/fd/0", read)]
        rules += [("/proc/self/fd/1", write), ("/proc/self/fd/2", write), *read_rules(readable, hidden, read)]
        for path, allowed in rules:
            landlock_rule(libc, ruleset, path, allowed)
        return "landlock (reads and writes)" if libc.syscall(446, ruleset, 0) == 0 else ""  # landlock_restrict_self
    finally:
        os.close(ruleset)


def read_rules(readable: list[str], hidden: list[str], read: int) -> list[tuple[str, int]]:
    """(path, rights) that let the program read ``readable`` but not ``hidden``: a rule covers all beneath it,
    so a folder above a hidden one is only listable, and each of its other entries gets a rule of its own."""
    rules = []
    for path in readable:
        inner = [folder for folder in hidden if folder.startswith(path.rstrip("/") + "/")]
        if not inner:
            rules.append((path, read))
            continue
        rules.append((path, 1 << 3))  # READ_DIR
        entries = [entry.path for entry in os.scandir(path) if entry.path not in inner]
        rules += read_rules(entries, inner, read)
    return rules


def landlock_rule(libc, ruleset: int, path: str, allowed: int) -> None:
    """Allow ``allowed`` beneath ``path`` (a folder, or a single file: only file rights apply to it)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # not on this machine (no /dev/urandom, a broken link): nothing to allow
    try:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            allowed &= (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14)  # EXECUTE, WRITE_FILE, READ_FILE, TRUNCATE
        libc.syscall(445, ruleset, 1, struct.pack("<Qi", allowed, fd), 0)  # LANDLOCK_RULE_PATH_BENEATH
    finally:
        os.close(fd)


# Refused by seccomp, by name; numbers per architecture below.
DENIED = (
    "socket socketpair execve execveat ptrace rt_sigqueueinfo tkill rt_tgsigqueueinfo process_vm_readv "
    "process_vm_writev pidfd_send_signal pidfd_getfd io_uring_setup unshare setns memfd_create memfd_secret "
    "shmget shmat shmctl chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat utime utimes futimesat "
    "utimensat setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr setxattrat removexattrat "
    "link linkat add_key request_key keyctl bpf perf_event_open userfaultfd fork vfork semget semop semctl "
    "semtimedop msgget msgsnd msgrcv msgctl mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify "
    "mq_getsetattr shmdt setpriority ioprio_set"
).split()


def syscall_numbers(text: str) -> dict[str, int]:
    """``"name number name number ..."`` as a dict."""
    words = text.split()
    return {name: int(number) for name, number in zip(words[::2], words[1::2])}


SYSCALLS = {
    "x86_64": syscall_numbers(
        """
    socket 41 socketpair 53 fork 57 vfork 58 execve 59 ptrace 101 rt_sigqueueinfo 129 tkill 200
    rt_tgsigqueueinfo 297 process_vm_readv 310 process_vm_writev 311 execveat 322 pidfd_send_signal 424
    io_uring_setup 425 pidfd_getfd 438 unshare 272 setns 308 memfd_create 319 memfd_secret 447 shmget 29
    shmat 30 shmctl 31 chmod 90 fchmod 91 fchmodat 268 fchmodat2 452 chown 92 fchown 93 lchown 94
    fchownat 260 utime 132 utimes 235 futimesat 261 utimensat 280 setxattr 188 lsetxattr 189
    fsetxattr 190 removexattr 197 lremovexattr 198 fremovexattr 199 setxattrat 463 removexattrat 466
    link 86 linkat 265 add_key 248 request_key 249 keyctl 250 bpf 321 perf_event_open 298
    userfaultfd 323 clone 56 kill 62 tgkill 234 clone3 435 semget 64 semop 65 semctl 66 shmdt 67 msgget 68
    msgsnd 69 msgrcv 70 msgctl 71 semtimedop 220 mq_open 240 mq_unlink 241 mq_timedsend 242
    mq_timedreceive 243 mq_notify 244 mq_getsetattr 245 setpriority 141 ioprio_set 251 fcntl 72
    prlimit64 302 sched_setaffinity 203 sched_setparam 142 sched_setscheduler 144 sched_setattr 314
        """
    ),
    "aarch64": syscall_numbers(
        """
    socket 198 socketpair 199 execve 221 ptrace 117 rt_sigqueueinfo 138 tkill 130 rt_tgsigqueueinfo 240
    process_vm_readv 270 process_vm_writev 271 execveat 281 pidfd_send_signal 424 io_uring_setup 425
    pidfd_getfd 438 unshare 97 setns 268 memfd_create 279 memfd_secret 447 shmget 194 shmat 196
    shmctl 195 fchmod 52 fchmodat 53 fchmodat2 452 fchown 55 fchownat 54 utimensat 88 setxattr 5
    lsetxattr 6 fsetxattr 7 removexattr 14 lremovexattr 15 fremovexattr 16 setxattrat 463
    removexattrat 466 linkat 37 add_key 217 request_key 218 keyctl 219 bpf 280 perf_event_open 241
    userfaultfd 282 clone 220 kill 129 tgkill 131 clone3 435 mq_open 180 mq_unlink 181 mq_timedsend 182
    mq_timedreceive 183 mq_notify 184 mq_getsetattr 185 msgget 186 msgctl 187 msgrcv 188 msgsnd 189
    semget 190 semctl 191 semtimedop 192 semop 193 shmdt 197 setpriority 140 ioprio_set 30 fcntl 25
    prlimit64 261 sched_setaffinity 122 sched_setparam 118 sched_setscheduler 119 sched_setattr 274
        """
    ),
}
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


# classic BPF: BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K; seccomp's verdicts
LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050001, 0x00050026
ARG0, ARG1 = 16, 24  # offsets in seccomp_data of the low words of the first two arguments (nr at 0, arch at 4)


def seccomp_program(machine: str, pid: int) -> list[tuple[int, int, int, int]]:
    """The BPF filter as (code, jump if true, jump if false, k): the ``DENIED`` calls refused with EPERM, clone3
    with ENOSYS (glibc falls back to clone), and the calls below allowed only as they say."""
    numbers = SYSCALLS[machine]
    program = [(LD, 0, 0, 4), (JEQ, 1, 0, AUDIT_ARCH[machine]), (RET, 0, 0, EPERM), (LD, 0, 0, 0)]
    program += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, EPERM), (JEQ, 0, 1, numbers["clone3"]), (RET, 0, 0, ENOSYS)]
    program += only_if(numbers["clone"], ARG0, [(JSET, 0x10000, ALLOW)], EPERM)  # threads: CLONE_THREAD
    for name in ("kill", "tgkill"):  # signals only to this process (kill(0) would reach its whole group)
        program += only_if(numbers[name], ARG0, [(JEQ, pid, ALLOW)], EPERM)
    for name in ("prlimit64", "sched_setaffinity", "sched_setparam", "sched_setscheduler", "sched_setattr"):
        program += only_if(numbers[name], ARG0, [(JEQ, 0, ALLOW), (JEQ, pid, ALLOW)], EPERM)  # 0: this process
    program += only_if(numbers["fcntl"], ARG1, [(JEQ, 8, EPERM), (JEQ, 15, EPERM)], ALLOW)  # no F_SETOWN(_EX)
    denied = sorted({numbers[name] for name in DENIED if name in numbers})
    program += [instruction for number in denied for instruction in ((JEQ, 0, 1, number), (RET, 0, 0, EPERM))]
    program.append((RET, 0, 0, ALLOW))
    return program


def only_if(number: int, offset: int, checks: list[tuple[int, int, int]], otherwise: int) -> list[tuple]:
    """For call ``number``: load the argument at ``offset``; the first (test, value, verdict) that holds decides,
    else ``otherwise``. Another call jumps past it all, with its number still loaded."""
    body = [(LD, 0, 0, offset)]
    for test, value, verdict in checks:
        body += [(test, 0, 1, value), (RET, 0, 0, verdict)]
    body.append((RET, 0, 0, otherwise))
    return [(JEQ, 0, len(body), number), *body]


def install_seccomp(libc) -> str:
    """Install ``seccomp_program`` for this machine and process. "" where there is no table for the machine."""
    machine = platform.machine()
    if machine not in SYSCALLS:
        return ""
    program = seccomp_program(machine, os.getpid())

    class Filter(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *instruction) for instruction in program))
    installed = libc.prctl(22, 2, ctypes.byref(Filter(len(program), ctypes.addressof(code))), 0, 0) == 0
    return "seccomp" if installed else ""


def guard(folder: str, readable: list[str]) -> None:
    """Install the audit hook. A refusal raises Refused in the program, at the call that tried."""
    disarm()
    check_path = path_check(folder, readable)
    wrap_open(check_path)
    wrap_sqlite()
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
            raise Refused(f"refused by the nsa sandbox: {event}")
        if event == "import" and args[0].partition(".")[0] in modules:
            raise Refused(f"refused by the nsa sandbox: import {args[0]}")
        if event == "import" and args[0] in ("_gdbm", "_dbm"):
            # They write in C, unseen here; as if not installed, dbm falls back to dbm.dumb, which uses open().
            raise ModuleNotFoundError(f"{args[0]} is withheld by the nsa sandbox")
        check_path(event, args)

    sys.addaudithook(hook)


def disarm() -> None:
    """Replace the process, signal, memory and file-node calls that raise no audit event with refusals."""
    import _posixsubprocess  # cached now, so `import subprocess` still works, without its fork_exec
    import _signal
    import posix

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise Refused("refused by the nsa sandbox")

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


def path_check(folder: str, readable: list[str]):
    """The file part of the hook: writes, directory handles and other processes' /proc only inside ``folder``,
    reads and listings only there and beneath ``readable``."""
    root = os.path.realpath(folder)
    roots = (root, *readable)

    def inside(path: object, dir_fd: int | None = None, where: tuple[str, ...] = (root,)) -> bool:
        real = real_path(path, None if dir_fd == -1 else dir_fd)  # the events say -1 for no dir_fd
        return real is not None and any(real == top or real.startswith(top.rstrip("/") + "/") for top in where)

    def refused(event: str, args: tuple) -> bool:
        if event in PATH_EVENTS:
            pairs = PATH_EVENTS[event]
            return not all(inside(args[path], None if dir_fd is None else args[dir_fd]) for path, dir_fd in pairs)
        if event in ("os.listdir", "os.scandir"):
            return not inside(args[0] if args[0] is not None else ".", where=roots)
        if event == "sqlite3.connect":
            database = sqlite_file(args[0])
            return database is not None and not inside(database)
        return event == "open" and open_refused(args, inside, roots)

    def check(event: str, args: tuple) -> None:
        if refused(event, args):
            raise Refused(f"refused by the nsa sandbox: {event} {args[0]!r}")

    return check


def open_refused(args: tuple, inside, roots: tuple[str, ...]) -> bool:
    """Whether to refuse an ``open`` event: outside the folder, a write, a directory, another process's /proc,
    or a read from anywhere but the readable roots."""
    if isinstance(args[0], int) or os.fsdecode(args[0]) in STREAMS or inside(args[0]):
        return False  # a descriptor already open (open(fd)): nothing new is reached
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real, mode, flags = os.path.realpath(os.fsdecode(args[0])), args[1] or "", args[2] or 0
    own = real == "/proc/self" or real.startswith((f"/proc/{os.getpid()}/", "/proc/self/"))
    # a directory descriptor outside: a way past path checks for calls that raise no event (fchdir, scandir)
    written = bool(flags & writes) or any(c in mode for c in "wax+") or os.path.isdir(real)
    return written or not (own or inside(real, where=roots))


def real_path(path: object, dir_fd: int | None = None) -> str | None:
    """The real path a call reaches: a descriptor's from /proc/self/fd, a dir_fd-relative path's from the folder
    that dir_fd is. None for a closed descriptor or one that is no file in a folder (a pipe, a socket)."""
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


def wrap_open(check) -> None:
    """``os.open``'s audit event carries no dir_fd: check a dir_fd-relative open again, where it points."""
    import posix

    plain_open = posix.open

    def open(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is not None:
            check("open", (real_path(path, dir_fd) or "/", None, flags))  # None: refused, as "/" is
        return plain_open(path, flags, mode, dir_fd=dir_fd)

    os.open = posix.open = open


def wrap_sqlite() -> None:
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


def sqlite_file(name: object) -> str | None:
    """The file an sqlite3 database name opens; None for none (":memory:", and "": a temporary file in TMPDIR).

    A "file:" URI is read as a URI (its path, percent-decoded) whether or not ``uri=True``: the event omits it.
    """
    from urllib.parse import unquote_to_bytes

    name = os.fsdecode(name)
    if name[:5].lower() == "file:":
        # the bytes SQLite decodes, back to a str as os would (not UTF-8 only): so realpath sees the same names
        name = os.fsdecode(unquote_to_bytes(name[5:].partition("?")[0].partition("#")[0]))
        if name.startswith("//"):  # file://host/path
            name = "/" + name[2:].partition("/")[2]
    return None if name in ("", ":memory:") else name


class Packages:
    """Finds the allowed site-packages at their known files, so that the folder holding them stays unreadable."""

    def __init__(self, origins: dict[str, str]) -> None:
        self.origins = origins

    def find_spec(self, name: str, path: object = None, target: object = None):
        origin = self.origins.get(name)
        if origin is None:
            return None
        package = os.path.basename(origin).startswith("__init__.")
        folders = [os.path.dirname(origin)] if package else None
        return importlib.util.spec_from_file_location(name, origin, submodule_search_locations=folders)


def can_import(packages: dict[str, str]) -> str:
    """Whether the (maybe dropped) user can still import a standard module not loaded yet, and the packages."""
    try:
        for name in ["fractions", *packages]:
            importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 (any failure to import is the answer)
        return f"failed: {type(error).__name__}: {error}"
    return "ok"


def run(source: str, fn_name: str | None) -> int:
    """Run the program after LiveCodeBench's imports: on stdin as ``__main__``, or for functional tests as
    ``tmp_sol`` (as LiveCodeBench does: a ``__main__`` block must not eat the JSON arguments on stdin), then
    call ``fn_name`` and write its JSON result to stdout."""
    import site

    site.setquit()  # exit() and quit(), which -S leaves out
    module = types.ModuleType("tmp_sol" if fn_name else "__main__")
    module.__file__ = "solution.py"
    sys.modules[module.__name__], sys.argv = module, ["solution.py"]
    result_fd = None
    if fn_name:
        # The program's own prints go to stderr; only the result reaches stdout.
        result_fd = os.dup(1)
        os.dup2(2, 1)
    try:
        exec(IMPORTS, module.__dict__)
        exec(compile(source, "solution.py", "exec"), module.__dict__)
        if fn_name:
            call(module, fn_name, result_fd)
    except SystemExit as done:
        return 0 if done.code is None else done.code if isinstance(done.code, int) else 1
    except MemoryError:
        return EXIT_MEMORY
    except Refused:
        traceback.print_exc()
        return EXIT_REFUSED
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def call(module: types.ModuleType, fn_name: str, result_fd: int) -> None:
    """Call the solution on stdin's JSON arguments (one per line); serialise the result here, in the sandbox."""
    args = [json.loads(line) for line in sys.stdin.read().split("\n") if line.strip()]
    owner = module.Solution() if hasattr(module, "Solution") else module
    # JSON here means an object cannot fake equality: only its serialised value is compared, in the parent.
    text = json.dumps(getattr(owner, fn_name)(*args)).encode()
    while text:
        text = text[os.write(result_fd, text) :]


# event -> the (path, dir_fd) argument indexes of each path that must lie inside the folder, where the dir_fd
# (or a path that is a descriptor) says where it is
PATH_EVENTS = {
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
STREAMS = ("/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/null", "/dev/urandom")
STREAMS += ("/proc/self/fd/0", "/proc/self/fd/1", "/proc/self/fd/2")
# LiveCodeBench's import_string (lcb_runner/evaluation/testing_util.py), run before every program as it does:
# its answers use these names (List, cache, inf, heappush, ...) without importing them, and recurse deep.
LCB_MODULES = ["string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random"]
LCB_MODULES += ["statistics", "itertools", "functools", "operator", "io", "sys", "json"]
IMPORTS = "".join(
    [f"from {name} import *\n" for name in [*LCB_MODULES, "builtins", "typing"]]
    + [f"import {name}\n" for name in LCB_MODULES]
    + ["sys.setrecursionlimit(50000)\n"]
)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
