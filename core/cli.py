"""The ``nsa`` command: its command table, and the dispatch to the module that runs each.

``COMMANDS`` is the one list of commands: ``nsa --help`` prints it and ``main`` dispatches
by it. This module imports nothing heavy: ``nsa --help`` and ``nsa plugins`` read
metadata only, and ``nsa <command> --help`` prints a help text rendered once per installed
version (torch and Lightning take 10-15 s of CPU to import on a small machine).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import importlib
import io
import os
import re
import shutil
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from nsa.errors import NSAError
from nsa.registry import Plugin, advertised


@dataclass(frozen=True)
class Command:
    name: str
    usage: str  # the arguments after the name, as the help shows them
    summary: str
    target: str  # "module:function", imported only when the command runs; called with the arguments after the name
    plugin_names: bool = True  # short plugin names in the arguments are resolved before the call


COMMANDS = {
    c.name: c
    for c in (
        Command("fit", "--config R", "run the data stages (cached) and train", "nsa.commands:fit"),
        Command("prepare", "--config R", "run only the data stages and print their statistics", "nsa.commands:prepare"),
        Command(
            "generate",
            "--config R [--output F.jsonl|F.parquet]",
            "sample and verify answers (cached); write them to F, which --data.rollouts=F trains on later",
            "nsa.commands:generate",
        ),
        Command(
            "evaluate",
            "--config R",
            "sample n answers per benchmark problem (the recipe's evaluate: section), verify, print and log "
            "avg@n and pass@k to MLflow",
            "nsa.commands:evaluate",
        ),
        Command(
            "sweep",
            "--config S",
            "run each cell of a sweep file (a base recipe and its overrides, e.g. recipes/ablations/beta.yaml) "
            "as nsa fit, skipping finished ones; MLflow child runs of one parent, with a summary table",
            "nsa.sweep:run",
            plugin_names=False,  # the sweep file reaches nsa.sweep as a path; it resolves each cell's names
        ),
        Command(
            "judge-eval", "--file F --judge J", "score a step judge on a ProcessBench-style file", "nsa.judge_eval:run"
        ),
        Command(
            "iterate",
            "--config R --iterations N",
            "N rounds of sample (with the last trained policy), verify, judge, train, evaluate; one MLflow child "
            "run each, resumable",
            "nsa.iterate:run",
        ),
        Command(
            "inspect",
            "--config R [--output F.html]",
            "a page of the judged negatives: steps coloured by consensus, each judge's verdicts, the weights, "
            "agreement counts; to MLflow",
            "nsa.inspector:run",
        ),
        Command("plugins", "", "list the advertised plugins (imports none)", "nsa.cli:print_plugins", False),
    )
}

PLACEMENT = """fit, prepare, generate and evaluate run on the trainer's placement (trainer.devices,
trainer.num_nodes, or torchrun/SLURM): every process takes shards of every data stage."""


def description() -> str:
    """The commands, one entry each, from ``COMMANDS``: the top of every ``--help``."""
    lines = ["BCPG-NSA: offline policy optimisation with negative sample augmentation.", ""]
    for c in COMMANDS.values():
        head = f"  nsa {c.name} {c.usage}".rstrip()
        body = textwrap.wrap(c.summary, 88 - 27)
        if len(head) > 25:  # the usage takes the line; the summary starts below it
            lines.append(head)
            head = ""
        lines += [f"{head:<27}{text}" for text in body[:1]] + [" " * 27 + text for text in body[1:]]
    return "\n".join([*lines, "", PLACEMENT])


def plugins_epilog(plugins: list[Plugin]) -> str:
    by_group: dict[str, list[str]] = defaultdict(list)
    for p in plugins:
        by_group[p.group].append(f"{p.name} ({p.class_path})")
    lines = [f"{group.removeprefix('nsa.')}: {', '.join(names)}" for group, names in by_group.items()]
    return "plugins (short name or class_path; `nsa plugins` for details):\n  " + "\n  ".join(lines)


def print_plugins(args: list[str] | None = None) -> None:
    rows = [(p.group.removeprefix("nsa."), p.name, p.class_path, p.dist) for p in advertised()]
    widths = [max(len(r[i]) for r in rows + [("kind", "name", "class_path", "from")]) for i in range(4)]
    for row in [("kind", "name", "class_path", "from"), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def print_help() -> None:
    usage = "usage: nsa <command> [options]; nsa <command> --help lists a command's options"
    print(f"{usage}\n\n{description()}\n\n{plugins_epilog(advertised())}")


def target(spec: str):
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help"):
            print_help()
            sys.exit(0)
        command = COMMANDS.get(args[0])
        if command is None and not args[0].startswith("-"):
            close = difflib.get_close_matches(args[0], COMMANDS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise NSAError(f"unknown command '{args[0]}': {hint}the commands are {', '.join(COMMANDS)} (nsa --help)")
        if command is None:  # options before any command: LightningCLI's own parser names what it expected
            return target("nsa.commands:lightning_cli")(args)
        if args[1:] in (["-h"], ["--help"]):
            return cached_help(command, args)
        if command.plugin_names:
            args = target("nsa.commands:with_plugin_names")(args)
        target(command.target)(args[1:])
    except (NSAError, argparse.ArgumentError) as err:
        if os.environ.get("NSA_DEBUG"):  # the traceback behind the one line, for whoever wants it
            raise
        print(f"nsa: error: {one_line(str(err))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "nsa: interrupted: committed stage shards and saved checkpoints are kept; run the same command again "
            "to resume from them",
            file=sys.stderr,
        )
        sys.exit(130)  # as a shell reports a job stopped by SIGINT


def cached_help(command: Command, args: list[str]) -> None:
    """``nsa <command> --help``: rendered by the command the first time, then read back, as long as
    nsa's files, the installed packages, the plugins and the terminal width are unchanged."""
    path = help_cache() / f"{command.name}-{help_key(args)}.txt"
    with contextlib.suppress(OSError):
        sys.stdout.write(path.read_text())
        sys.exit(0)
    text, code = rendered(command, args)
    if code in (0, None):
        with contextlib.suppress(OSError):  # a cache we cannot write costs time, nothing else
            path.parent.mkdir(parents=True, exist_ok=True)
            scratch = path.with_suffix(f".{os.getpid()}.tmp")
            scratch.write_text(text)
            scratch.replace(path)
    sys.stdout.write(text)
    sys.exit(code)


def rendered(command: Command, args: list[str]) -> tuple[str, int | str | None]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            target(command.target)(args[1:])
            code = 0
        except SystemExit as stop:
            code = stop.code
    return printed.getvalue(), code


def help_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "nsa" / "help"


def help_key(args: list[str]) -> str:
    """What a help text depends on: the arguments, the width it wraps to, nsa's own files (an
    editable install changes without a version), the packages that build it, the plugins."""
    import nsa
    import nsa.plugins

    digest = hashlib.sha256(repr((args, shutil.get_terminal_size().columns)).encode())
    for root in (*nsa.__path__, *nsa.plugins.__path__):
        for path in sorted(Path(root).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    for dist in ("jsonargparse", "lightning", "torch", "transformers", "nsa"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            digest.update(f"{dist}={metadata.version(dist)}".encode())
    digest.update(repr(advertised()).encode())
    return digest.hexdigest()[:16]


# jsonargparse's words for a class it refused in a protocol-typed slot: ``Import path X does not implement
# protocol P`` or ``Problem with given class_path 'X': <why the import failed>``
PLUGIN_REFUSED = re.compile(
    r'Parser key "([\w.]+)":.*?(?:Import path ([\w.]+) does not implement protocol|Problem with given class_path '
    r"'([\w.]+)')"
)


def one_line(message: str) -> str:
    """jsonargparse explains a bad value over several lines; keep what names the problem."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    text = " ".join(lines[:4]) + (" ..." if len(lines) > 4 else "")
    refused = PLUGIN_REFUSED.search(text)
    if refused:  # a plugin of another kind, one that breaks its contract, or one that does not import
        from nsa.commands import slot_protocols
        from nsa.conformance import explain

        slot, class_path = refused.group(1), refused.group(2) or refused.group(3)
        protocol = slot_protocols().get(f"--{slot}")
        problem = explain(class_path, protocol) if protocol else ""
        text = f"--{slot}: {problem}" if problem else text  # else the class is fine: its init_args are not
    unknown = re.search(r'Parser key "([\w.]+)":.* Expected a dot import path string: (\S+)', text)
    if unknown:  # a name no plugin advertises and jsonargparse cannot import
        from nsa.commands import slot_groups
        from nsa.registry import unknown_name_error

        slot, name = unknown.groups()
        text = str(unknown_name_error(name, advertised(), slot_groups().get(f"--{slot}"), f"--{slot}"))
    return text
