"""Plugins by name, read from entry-point metadata.

Built-ins and third-party packages advertise plugins the same way, in their packaging
metadata (groups ``nsa.segmenters``, ``nsa.judges``, ...). Listing reads metadata only and
imports nothing, so a broken plugin breaks only the runs that name it. There is no global
registry: every call reads the installed distributions again.

Before the CLI parses, short names (``class_path: BCPG``) are rewritten to full class
paths; a misspelt name fails with "did you mean".
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from nsa.errors import NSAError, yaml_error

GROUPS = (
    "nsa.segmenters",
    "nsa.judges",
    "nsa.consensus",
    "nsa.losses",
    "nsa.verifiers",
    "nsa.samplers",
    "nsa.benchmarks",
)


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


def unknown_name_error(name: str, plugins: list[Plugin]) -> NSAError:
    names = sorted({p.name for p in plugins})
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return NSAError(f"unknown plugin '{name}': {hint}available: {', '.join(names)} (see `nsa plugins`)")


def resolve_name(value: str, plugins: list[Plugin]) -> str:
    """Full class path for a short plugin name; other values pass through.

    A bare identifier that no plugin advertises but is close to one is taken for a
    misspelling and rejected. Names jsonargparse resolves on its own (torch optimizers
    such as ``AdamW``) are not close to any plugin and pass.
    """
    if not value.isidentifier():
        return value
    plugin = lookup(value, plugins)
    if plugin is not None:
        return plugin.class_path
    names = {p.name for p in plugins}
    if difflib.get_close_matches(value, names, n=1, cutoff=0.75):
        raise unknown_name_error(value, plugins)
    return value


def rewrite_config(node: Any, plugins: list[Plugin]) -> Any:
    """Rewrite every ``class_path`` short name in a parsed YAML tree."""
    if isinstance(node, list):
        return [rewrite_config(item, plugins) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: rewrite_config(val, plugins) for key, val in node.items()}
    if isinstance(out.get("class_path"), str):
        out["class_path"] = resolve_name(out["class_path"], plugins)
    return out


def _rewrite_config_file(path: str, plugins: list[Plugin]) -> str:
    """The recipe itself if it uses full paths only, else its rewritten YAML text."""
    import yaml

    try:
        with open(path) as f:
            tree = yaml.safe_load(f)
    except FileNotFoundError:
        raise NSAError(f"recipe file not found: {path}") from None
    except yaml.YAMLError as err:
        raise yaml_error(f"recipe {path}", err) from None
    rewritten = rewrite_config(tree, plugins)
    return path if rewritten == tree else yaml.safe_dump(rewritten, sort_keys=False)


def rewrite_args(argv: list[str], plugins: list[Plugin], slots: frozenset[str] = frozenset()) -> list[str]:
    """Resolve short plugin names in command-line arguments and the recipes they name.

    A value is taken for a plugin name only under a ``.class_path`` or ``.help`` key, or
    under a plugin slot given bare (``--model.loss=BCPG``, with ``slots`` holding
    ``--model.loss``); every other value passes through untouched.
    """
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


def _rewrite_value(key: str, value: str, plugins: list[Plugin], slots: frozenset[str]) -> str:
    if key in ("--config", "-c"):
        return _rewrite_config_file(value, plugins)
    if key.endswith((".class_path", ".help")) or key.removesuffix("+") in slots:
        if value.startswith("[") and value.endswith("]"):  # a list of plugins: --data.judges=[A,B]
            return "[" + ",".join(resolve_name(v.strip(), plugins) for v in value[1:-1].split(",")) + "]"
        return resolve_name(value, plugins)
    return value
