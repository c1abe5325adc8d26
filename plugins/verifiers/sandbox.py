"""The code sandbox: one Python program, one test, in a confined subprocess with no view of the host (for CodeVerifier).

A helper module of ``code.py``, not a plugin. ``execute`` runs a program once; its exit code says how it ended
(``EXIT_MEMORY``, ``EXIT_REFUSED``, a signal, or the program's own), and ``code.py`` turns that into a status.

Each run gets a fresh private folder (program, stdin, stdout, stderr), a clean environment (no inherited
secrets) and ``python -I -S -B sandbox_launcher.py``, which confines itself before it runs the program
(``sandbox_launcher.py`` lists its layers: rlimits, a network namespace, no root, Landlock, seccomp, an audit
hook). Where the machine has bubblewrap (``bwrap``, what Flatpak uses), the launcher runs inside it:

- a new mount namespace whose only files are read-only binds of what running Python needs (``readable``:
  the interpreter, its standard library without its site-packages, the packages the verifier allows, the
  system's shared libraries) and, as the program's folder, a tmpfs of ``disk_mb``: no repository, no caches,
  no home folders, no /etc;
- new PID, IPC, UTS and network namespaces (and a user namespace where the verifier is not root), dying
  with the verifier.

Without bubblewrap the launcher's own layers still confine reads (Landlock, to the same ``readable`` paths),
but the folder is on disk with only a per-file limit: ``checked_limits()`` prints which layers are missing.
The parent kills the run's whole process group on timeout and after every run, and removes its folder
without following links. Bad programs never hang or crash the verifier: each run is bounded, and the parent
only waits for it and reads its files.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
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

from nsa.errors import NSAError
from nsa.plugins.verifiers.sandbox_launcher import EXIT_MEMORY, EXIT_REFUSED, EXIT_SETUP

__all__ = [
    "EXIT_MEMORY",
    "EXIT_REFUSED",
    "EXIT_SETUP",
    "Limits",
    "checked_limits",
    "execute",
    "package_origins",
    "sandbox_report",
]

LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
# Wall-clock grace on top of timeout_s for the interpreter to start (it is not the program's time).
_STARTUP_S = 1.0
# The system's shared libraries (and the links to them on merged-/usr systems), for the interpreter to load.
_SYSTEM = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32", "/libx32", "/etc/ld.so.cache")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


@dataclass(frozen=True)
class Limits:
    """What one sandboxed run may use, and which layers to attempt (all of them, except in tests of one layer)."""

    timeout_s: float
    memory_mb: int
    output_mb: int
    disk_mb: int = 64
    packages: tuple[str, ...] = ()  # site-packages the program may import (top-level names)
    bubblewrap: bool = True
    namespaces: bool = True
    drop_root: bool = True
    filters: bool = True  # seccomp and Landlock: the kernel's process, socket and file refusals
    audit_hook: bool = True
    required: tuple[str, ...] = ()  # kernel layers a run must set up or not run at all (what the probe found)


def execute(program: str, given: str, mode: str, fn_name: str | None, limits: Limits) -> tuple[int, bool, str, str]:
    """One sandboxed run in a fresh folder: (return code, whether the parent stopped it, stdout, stderr).

    ``mode`` is ``stdin`` (run the program on ``given``), ``call`` (call ``fn_name`` on the JSON arguments in
    ``given``, its JSON result on stdout) or ``report`` (print which layers are in force, run nothing).
    """
    with _scratch() as scratch:
        (scratch / "program.py").write_text(program, encoding="utf-8")
        (scratch / "stdin").write_text(given, encoding="utf-8")
        returncode, timed_out = _launch(scratch, mode, fn_name, limits)
        stdout, stderr = ((scratch / name).read_bytes().decode(errors="replace") for name in ("stdout", "stderr"))
    return returncode, timed_out, stdout, stderr


@contextlib.contextmanager
def _scratch():
    """A private folder for one run (program, stdin, stdout, stderr) with ``work/``, the program's cwd."""
    base = Path(tempfile.mkdtemp(prefix="nsa-code-"))
    try:
        base.chmod(0o711)  # the program (maybe uid 65534) may pass through to work/, not list or read the rest
        (base / "work").mkdir(mode=0o700)  # the launcher hands it to uid 65534 when it drops root
        yield base
    finally:
        _remove_tree(base)


def _remove_tree(path: Path) -> None:
    """Delete a run's folder, also where the program nested folders thousands deep (no recursion, no path
    longer than a name: each folder is reached through its parent's descriptor) or took permissions away from
    them (as an ordinary user; root needs none). Links are deleted, never followed; nothing here raises: a
    folder that cannot be deleted is a warning, not a lost batch."""
    with contextlib.suppress(OSError):
        if not os.path.islink(path):
            os.chmod(path, 0o700)
        _empty(os.open(path, _FOLDER))
        os.rmdir(path)
    if os.path.lexists(path):
        print(f"nsa: code sandbox: could not delete {path}", file=sys.stderr)


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _empty(descriptor: int) -> None:
    """Delete everything in the folder open as ``descriptor`` (closed afterwards), depth first, holding one
    descriptor at a time: down through a folder's name, back up through ".."."""
    frames: list[list] = [["", None]]  # per level: its name in the folder above, its folders not yet visited
    try:
        while frames:
            frame = frames[-1]
            if frame[1] is None:
                frame[1] = _delete_files(descriptor)
            elif frame[1]:
                name = frame[1].pop()
                with contextlib.suppress(OSError):
                    os.chmod(name, 0o700, dir_fd=descriptor)  # a folder, not a link: scandir said so
                with contextlib.suppress(OSError):
                    descriptor = _move(descriptor, os.open(name, _FOLDER, dir_fd=descriptor))
                    frames.append([name, None])
            else:
                name = frames.pop()[0]
                if frames:
                    descriptor = _move(descriptor, os.open("..", _FOLDER, dir_fd=descriptor))
                    with contextlib.suppress(OSError):
                        os.rmdir(name, dir_fd=descriptor)
    finally:
        os.close(descriptor)


def _move(old: int, new: int) -> int:
    os.close(old)
    return new


def _delete_files(folder: int) -> list[str]:
    """Unlink every entry of ``folder`` that is not a folder (links included); the folders' names."""
    with os.scandir(folder) as entries:
        found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_folder in found:
        if not is_folder:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=folder)
    return [name for name, is_folder in found if is_folder]


def _launch(scratch: Path, mode: str, fn_name: str | None, limits: Limits) -> tuple[int, bool]:
    """Run the launcher on ``scratch``; (return code, whether the parent had to stop it)."""
    command = [_python(), "-I", "-S", "-B", str(LAUNCHER), json.dumps(_config(scratch, mode, fn_name, limits))]
    if limits.bubblewrap:
        command = _bubblewrap(scratch, limits) + command
    streams = [open(scratch / name, access) for name, access in (("stdin", "rb"), ("stdout", "wb"), ("stderr", "wb"))]
    try:
        if os.geteuid() == 0 and limits.drop_root:
            for stream in streams:  # so that reopening them (/dev/stdout) works for the dropped user
                os.fchown(stream.fileno(), 65534, 65534)
        process = subprocess.Popen(
            command,
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
    returncode, timed_out = _wait(process, limits.timeout_s + _STARTUP_S)
    if limits.bubblewrap and returncode > 128:
        returncode = 128 - returncode  # bwrap exits 128 + N where signal N ended the launcher: as Popen says, -N
    return returncode, timed_out


def _config(scratch: Path, mode: str, fn_name: str | None, limits: Limits) -> dict:
    """What the launcher reads from its argument: the program, the mode, the limits and the layers to set up."""
    readable, hidden = _readable()
    return {
        "program": str(scratch / "program.py"),
        "mode": mode,
        "fn_name": fn_name,
        "cpu_s": math.ceil(limits.timeout_s) + 1,
        "memory_bytes": limits.memory_mb << 20,
        "output_bytes": limits.output_mb << 20,
        "disk_bytes": limits.disk_mb << 20,
        "readable": [*readable, *_package_roots(limits.packages), str(scratch / "program.py")],
        "hidden": hidden,
        "packages": package_origins(limits.packages),
        **{name: getattr(limits, name) for name in ("bubblewrap", "namespaces", "drop_root", "filters", "audit_hook")},
        "required": list(limits.required),
    }


def _python() -> str:
    """The interpreter's real file: run directly, it is the base interpreter (no venv, whose packages -S skips)."""
    return os.path.realpath(sys.executable)


def _readable() -> tuple[list[str], list[str]]:
    """(paths the program may read, folders within them it may not): what running Python needs, and nothing else
    but the allowed packages (``_package_roots``, which may lie in a hidden folder).

    The rule for both layers: bubblewrap binds exactly these, Landlock allows exactly these.
    """
    return _readable_by(_python())


@functools.cache
def _readable_by(python: str) -> tuple[list[str], list[str]]:
    """``_readable`` for the interpreter ``python``, which says where its standard library lies."""
    ask = "import json, sysconfig as s; print(json.dumps([s.get_paths(), s.get_config_vars()]))"
    answer = subprocess.run([python, "-I", "-S", "-c", ask], capture_output=True, text=True)
    if answer.returncode != 0:
        raise NSAError(f"CodeVerifier: {python} does not say where its standard library lies: {answer.stderr[-300:]}")
    paths, variables = json.loads(answer.stdout)
    stdlib = {paths["stdlib"], paths["platstdlib"], variables.get("DESTSHARED") or ""}  # with lib-dynload
    library = os.path.join(variables.get("LIBDIR") or "", variables.get("INSTSONAME") or "")
    shared = [library] if variables.get("Py_ENABLE_SHARED") else []
    found = [python, *shared, *stdlib, str(LAUNCHER)]
    paths = {os.path.realpath(path) for path in found if path and os.path.exists(path)}
    paths = sorted(paths | {path for path in _SYSTEM if os.path.lexists(path)})  # /lib64 stays a link: ld.so's path
    paths = [path for path in paths if not any(path.startswith(other + "/") for other in paths)]
    # Packages the program may not import: the interpreter's own site-packages, and the system's (Debian's
    # /usr/lib/python3/dist-packages, Fedora's /usr/lib64/python3.x/site-packages), left as empty folders.
    patterns = [f"{depth}{name}" for depth in ("", "*/") for name in ("site-packages", "dist-packages")]
    folders = [path for path in paths if not os.path.islink(path)]  # /lib -> usr/lib: hidden once, as /usr/lib/...
    hidden = {found for path in folders for pattern in patterns for found in glob.glob(os.path.join(path, pattern))}
    return paths, sorted(folder for folder in hidden if os.path.isdir(folder) and not os.path.islink(folder))


@functools.cache
def package_origins(packages: tuple[str, ...]) -> dict[str, str]:
    """Each allowed package's file (``__init__.py`` or the module), for the launcher's finder."""
    origins = {}
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.has_location or not spec.origin:
            raise NSAError(f"CodeVerifier.packages: {name!r} is not an installed package here; install it or drop it")
        origins[name] = spec.origin
    return origins


@functools.cache
def _package_roots(packages: tuple[str, ...]) -> list[str]:
    """The folders (or files) of the allowed packages, and the ``<name>.libs`` folders of their wheels."""
    roots = []
    for name, origin in package_origins(packages).items():
        package = os.path.basename(origin).startswith("__init__.")
        roots.append(os.path.dirname(origin) if package else origin)
        roots.append(os.path.join(os.path.dirname(roots[-1]), f"{name}.libs"))  # e.g. numpy.libs: its OpenBLAS
    return roots


def _bubblewrap(scratch: Path, limits: Limits) -> list[str]:
    """The bwrap command that gives the launcher an empty root with only ``_readable`` bound in, read-only."""
    readable, hidden = _readable()
    packages, program, work = _package_roots(limits.packages), str(scratch / "program.py"), str(scratch / "work")
    streams = [f"/dev/{name}" for name in ("stdin", "stdout", "stderr")]
    targets = [*readable, *hidden, *packages, program, work, *_DEVICES, *streams]
    args = ["bwrap", "--die-with-parent", *_unshare(limits), "--proc", "/proc"]
    for folder in sorted({parent for path in targets for parent in _parents(path)}, key=len):
        args += ["--perms", "0755", "--dir", folder]  # bwrap would copy private modes (/root: 0700)
    for path in readable:
        args += ["--symlink", os.readlink(path), path] if os.path.islink(path) else ["--ro-bind", path, path]
    for path in hidden:  # site-packages: an empty folder over each (read-only once the allowed ones are in)
        args += ["--perms", "0755", "--size", "4096", "--tmpfs", path]
    for path in [*packages, program]:
        args += ["--ro-bind-try" if path in packages else "--ro-bind", path, path]  # numpy.libs may not exist
    for path in hidden:
        args += ["--remount-ro", path]
    for device in _DEVICES:
        args += ["--dev-bind-try", device, device]
    for number, stream in enumerate(streams):
        args += ["--symlink", f"/proc/self/fd/{number}", stream]
    size = str(limits.disk_mb << 20)
    return [*args, "--perms", "0700", "--size", size, "--tmpfs", work, "--chdir", work, "--remount-ro", "/"]


def _unshare(limits: Limits) -> list[str]:
    """Root keeps only what the launcher needs to become uid 65534; anyone else gets a user namespace."""
    network = ["--unshare-net"] if limits.namespaces else []
    spaces = ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try", *network]
    if os.geteuid() == 0:
        keep = [word for name in ("SETUID", "SETGID", "CHOWN") for word in ("--cap-add", f"CAP_{name}")]
        return [*spaces, "--cap-drop", "ALL", *keep]
    return ["--unshare-user", "--disable-userns", *spaces]


def _parents(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: index + 1]) for index in range(len(parts))]


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
    """What the sandbox enforces on this machine, by layer: network, processes, files, metadata, memory, user."""
    returncode, _, stdout, stderr = execute("", "", "report", None, limits or Limits(5.0, 512, 1))
    if returncode != 0:
        lines = stderr.strip().splitlines() or [f"exit {returncode}"]
        raise RuntimeError(f"the code sandbox failed to start: {lines[-1]}")
    return json.loads(stdout)


@functools.cache
def checked_limits(limits: Limits) -> Limits:
    """The limits to run with here: probe the sandbox once per process, and say when a layer is missing.

    No bubblewrap (or one that cannot start here) falls back to the launcher's own layers, with a warning; a
    sandbox that cannot start, or whose user cannot import the standard library, is an NSAError.
    """
    missing = limits.bubblewrap and shutil.which("bwrap") is None
    report, problem = ({}, "bubblewrap is not installed") if missing else _probe(limits)
    if problem and limits.bubblewrap:
        print(
            f"nsa: code sandbox: {problem}; reads rest on Landlock alone and the folder on a per-file size "
            "limit (apt-get install bubblewrap for a sandbox with no view of the host)",
            file=sys.stderr,
        )
        limits = replace(limits, bubblewrap=False)
        report, problem = _probe(limits)
    if problem:
        raise NSAError(
            f"CodeVerifier: {problem}; install bubblewrap (apt-get install "
            "bubblewrap), which binds the interpreter in, or use a Python that uid 65534 can read (not under a "
            "private home folder such as /root)"
        )
    weak = [f"{layer}: {report[layer]}" for layer in ("network", "processes", "files") if "+" not in report[layer]]
    if weak:
        print(f"nsa: code sandbox: kernel layers missing on this machine ({'; '.join(weak)})", file=sys.stderr)
    found = f"{report['processes']} {report['files']}"
    return replace(limits, required=tuple(layer for layer in ("seccomp", "landlock") if layer in found))


def _probe(limits: Limits) -> tuple[dict[str, str], str]:
    """(the sandbox's report, why it cannot run programs with ``limits``: "" when it can)."""
    try:
        report = sandbox_report(limits)
    except (RuntimeError, OSError) as error:
        return {}, str(error)
    return report, "" if report["imports"] == "ok" else f"its user cannot import ({report['imports']})"
