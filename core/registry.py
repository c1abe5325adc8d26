"""Plugins by name, read from entry-point metadata.

Built-ins and third-party packages advertise plugins the same way, in their packaging
metadata (groups ``nsa.segmenters``, ``nsa.judges``, ...). Listing reads metadata only and
imports nothing, so a broken plugin breaks only the runs that name it. There is no global
registry: every call reads the installed distributions again.

Before the CLI parses, short names are rewritten to full class paths wherever a plugin can be
named: a slot's bare value (``loss: BCPG``, ``judges: [A, B]``, ``--model.loss=BCPG``), a
``class_path`` (``{class_path: BCPG, init_args: ...}``), in recipe files, overlays, sweep
overrides and on the command line; a misspelt name fails with "did you mean".
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from nsa.errors import NSAError, yaml_error

CONTRACTS = {  # entry-point group: the Protocol in nsa.contracts that its plugins meet
    "nsa.segmenters": "Segmenter",
    "nsa.judges": "StepJudge",
    "nsa.consensus": "Consensus",
    "nsa.losses": "PolicyLoss",
    "nsa.verifiers": "Verifier",
    "nsa.samplers": "Sampler",
    "nsa.benchmarks": "Benchmark",
}
GROUPS = tuple(CONTRACTS)


@dataclass(frozen=True)
class Plugin:
    group: str
    name: str
    value: str  # "module:Class", as written in the metadata
    dist: str

    @property
    def class_path(self) -> str:
        """The dotted path jsonargparse imports: ``module.Class``."""
        return self.value.replace(":", ".")


def advertised(groups: tuple[str, ...] = GROUPS) -> list[Plugin]:
    """Every plugin the installed distributions advertise, without importing any."""
    found = set()
    for group in groups:
        for ep in entry_points(group=group):
            dist = ep.dist.name if ep.dist is not None else "?"
            found.add(Plugin(group, ep.name, ep.value, dist))
    return sorted(found, key=lambda p: (p.group, p.name, p.dist))


def lookup(name: str, plugins: list[Plugin]) -> Plugin | None:
    """The plugin called ``name``; an error if two distributions claim it."""
    matches = {p.class_path: p for p in plugins if p.name == name}
    if len(matches) > 1:
        claims = ", ".join(f"{p.class_path} (from {p.dist})" for p in matches.values())
        raise NSAError(f"plugin name '{name}' is claimed twice: {claims}; write the full class_path instead")
    return next(iter(matches.values()), None)


def unknown_name_error(name: str, plugins: list[Plugin], group: str | None = None, where: str = "") -> NSAError:
    """``unknown plugin 'X' for --model.loss``, with the near misses and the installed plugins of that kind."""
    names = sorted({p.name for p in plugins if group in (None, p.group)})
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    kind = group or "plugins"
    return NSAError(
        f"unknown plugin '{name}'{f' for {where}' if where else ''}: {hint}installed {kind}: {', '.join(names)}; "
        "install the package that provides it, or write its full class_path (`nsa plugins` lists every kind)"
    )


def resolve_name(value: str, plugins: list[Plugin], group: str | None = None, where: str = "") -> str:
    """Full class path for a short plugin name; other values pass through.

    A bare identifier that no plugin advertises but is close to one (of ``group``, when the
    slot's kind is known) is taken for a misspelling and rejected. Names jsonargparse
    resolves on its own (torch optimizers such as ``AdamW``) are not close to any plugin and pass.
    """
    if not value.isidentifier():
        return value
    plugin = lookup(value, plugins)
    if plugin is not None:
        return plugin.class_path
    names = {p.name for p in plugins if group in (None, p.group)}
    if difflib.get_close_matches(value, names, n=1, cutoff=0.75):
        raise unknown_name_error(value, plugins, group, where)
    return value


def rewrite_config(node: Any, plugins: list[Plugin], slots: Mapping[str, str] | None = None, at: str = "-") -> Any:
    """Rewrite every ``class_path`` short name in a parsed YAML tree. ``at`` is the node's
    option (``--model.loss``); ``slots`` maps a plugin slot's option to its entry-point group."""
    if isinstance(node, list):
        return [rewrite_config(item, plugins, slots, at) for item in node]
    if isinstance(node, str) and at in (slots or {}):  # a plugin named bare: ``loss: RFT``, ``judges: [A, B]``
        return resolve_name(node, plugins, slots[at], at)
    if not isinstance(node, dict):
        return node
    out = {key: rewrite_config(val, plugins, slots, below(at, key)) for key, val in node.items()}
    if isinstance(out.get("class_path"), str):
        out["class_path"] = resolve_name(out["class_path"], plugins, (slots or {}).get(at), at)
    return out


def below(at: str, key: str) -> str:
    """The option of a YAML key under ``at``: ``--model`` + ``loss`` is ``--model.loss``; a
    plugin's ``init_args`` are options of the plugin itself."""
    if key == "init_args":
        return at
    return f"--{key}" if at == "-" else f"{at}.{key}"


def _rewrite_config_file(path: str, plugins: list[Plugin], slots: Mapping[str, str]) -> str:
    """The recipe itself if it uses full paths only, else its rewritten YAML text."""
    import yaml

    try:
        with open(path) as f:
            tree = yaml.safe_load(f)
    except FileNotFoundError:
        raise NSAError(f"recipe file not found: {path}") from None
    except yaml.YAMLError as err:
        raise yaml_error(f"recipe {path}", err) from None
    rewritten = rewrite_config(tree, plugins, slots)
    return path if rewritten == tree else yaml.safe_dump(rewritten, sort_keys=False)


def rewrite_args(argv: list[str], plugins: list[Plugin], slots: Mapping[str, str] | None = None) -> list[str]:
    """Resolve short plugin names in command-line arguments and the recipes they name.

    A value is taken for a plugin name only under a ``.class_path`` or ``.help`` key, or
    under a plugin slot given bare (``--model.loss=BCPG``, with ``slots`` mapping
    ``--model.loss`` to ``nsa.losses``); every other value passes through untouched.
    """
    slots = slots or {}
    out: list[str] = []
    previous = ""
    for token in argv:
        key, eq, value = token.partition("=") if token.startswith("-") else ("", "", token)
        if key and not eq:
            out.append(token)
        elif key:
            out.append(f"{key}={_rewrite_value(key, value, plugins, slots)}")
        else:
            out.append(_rewrite_value(previous, value, plugins, slots))
        previous = key if key and not eq else ""
    return out


def _rewrite_value(key: str, value: str, plugins: list[Plugin], slots: Mapping[str, str]) -> str:
    if key in ("--config", "-c"):
        return _rewrite_config_file(value, plugins, slots)
    slot = key.removesuffix("+").removesuffix(".class_path").removesuffix(".help")
    if slot == key.removesuffix("+") and slot not in slots:
        return value
    group = slots.get(slot)
    if value.startswith("{") or value.startswith("[{"):  # a plugin as a mapping: --model.loss={"class_path": "RFT"}
        return _rewrite_mapping(value, plugins, slots, slot)
    if value.startswith("[") and value.endswith("]"):  # a list of plugins: --data.judges=[A,B]
        return "[" + ",".join(resolve_name(v.strip(), plugins, group, slot) for v in value[1:-1].split(",")) + "]"
    return resolve_name(value, plugins, group, slot)


def _rewrite_mapping(value: str, plugins: list[Plugin], slots: Mapping[str, str], slot: str) -> str:
    """A JSON or YAML flow value (a sweep file's override, a shell-quoted mapping) with its names resolved."""
    import json

    import yaml

    try:
        tree = yaml.safe_load(value)
    except yaml.YAMLError:
        return value  # not a mapping after all: jsonargparse says what is wrong with it
    rewritten = rewrite_config(tree, plugins, slots, slot)
    return value if rewritten == tree else json.dumps(rewritten)
