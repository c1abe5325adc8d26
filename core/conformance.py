"""Whether a plugin class meets its contract, judged as a type checker would judge it.

jsonargparse asks for the protocol's annotations exactly; a plugin whose ``score`` takes
``Iterable[StepItem]`` where the contract passes ``Sequence[StepItem]`` is a correct plugin
that it would refuse. Here a parameter may be wider than the contract's (it must accept
what nsa passes) and a return narrower (it must give what nsa expects); list, dict and set
are invariant in their items, the read-only collections covariant, as in typing's rules.
A parameter or return left unannotated is ``Any``.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import types
import typing

INVARIANT = (list, dict, set)  # mutable: their items must match exactly
UNIONS = (typing.Union, types.UnionType)


def methods(protocol: type) -> list[str]:
    """The contract's methods: its public functions and ``__call__``."""
    names = [name for name, _ in inspect.getmembers(protocol, predicate=inspect.isfunction)]
    return [n for n in names if not n.startswith("_") or n == "__call__"]


def mismatches(cls: type, protocol: type) -> list[str]:
    """Why ``cls`` does not meet ``protocol``, one phrase per method; empty when it does."""
    problems = []
    for name in methods(protocol):
        if not any(name in vars(k) for k in cls.__mro__[:-1]):  # its own or a base's, never type's __call__
            problems.append(f"it has no method {name}()")
            continue
        problems += method_mismatches(cls, protocol, name)
    return problems


def conforms(cls: object, protocol: type) -> bool:
    """The test jsonargparse applies to a plugin slot typed by a protocol."""
    if not inspect.isclass(cls) or cls is object or not getattr(protocol, "_is_protocol", False):
        return False
    return bool(methods(protocol)) and not mismatches(cls, protocol)


def method_mismatches(cls: type, protocol: type, name: str) -> list[str]:
    want, want_hints = signature(protocol, name)
    got, got_hints = signature(cls, name)
    where = f"{cls.__name__}.{name}"
    if [p.name for p in got.parameters.values()][: len(want.parameters)] != list(want.parameters):
        return [f"{where}{shown(got, got_hints)} should be {name}{shown(want, want_hints)}: the parameter names differ"]
    extra = [p for p in list(got.parameters.values())[len(want.parameters) :] if p.default is p.empty]
    if extra:
        return [f"{where}: parameter {extra[0].name} has no default, and nsa never passes it"]
    for param in want.parameters:
        passed, taken = want_hints.get(param, typing.Any), got_hints.get(param, typing.Any)
        if not is_subtype(passed, taken):
            return [f"{where}: parameter {param} is {show(taken)}, which does not take {show(passed)}, what nsa passes"]
    given, expected = got_hints.get("return", typing.Any), want_hints.get("return", typing.Any)
    if not is_subtype(given, expected):
        return [f"{where} returns {show(given)}, where nsa expects {show(expected)}"]
    return []


def shown(sig: inspect.Signature, hints: dict[str, object]) -> str:
    params = [f"{p}: {show(hints[p])}" if p in hints else str(sig.parameters[p]) for p in sig.parameters]
    return f"({', '.join(params)})" + (f" -> {show(hints['return'])}" if "return" in hints else "")


def show(annotation: object) -> str:
    """``list[nsa.contracts.StepItem]`` as ``list[StepItem]``."""
    return re.sub(r"(?:\w+\.)+(\w+)", r"\1", inspect.formatannotation(annotation))


def signature(owner: type, name: str) -> tuple[inspect.Signature, dict[str, object]]:
    """The method's signature without ``self``, and its annotations resolved (unresolvable: none)."""
    function = inspect.getattr_static(owner, name)
    function = getattr(function, "__func__", function)  # a staticmethod or classmethod
    sig = inspect.signature(function)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # a name the plugin's module cannot resolve: judge by the names alone
        hints = {}
    return sig.replace(parameters=params), hints


def is_subtype(sub: object, sup: object) -> bool:
    """Whether a value of type ``sub`` may be used where ``sup`` is expected."""
    if sup is typing.Any or sup is object or sub is typing.Any or sub == sup:
        return True
    if typing.get_origin(sub) in UNIONS:
        return all(is_subtype(s, sup) for s in typing.get_args(sub))
    if typing.get_origin(sup) in UNIONS:
        return any(is_subtype(sub, s) for s in typing.get_args(sup))
    sub_origin, sup_origin = typing.get_origin(sub) or sub, typing.get_origin(sup) or sup
    if not (inspect.isclass(sub_origin) and inspect.isclass(sup_origin)):
        return False
    if sub_origin is int and sup_origin is float:  # typing's numeric promotion
        return True
    if not issubclass(sub_origin, sup_origin):
        return False
    return items_fit(sub_origin, sup_origin, typing.get_args(sub), typing.get_args(sup))


def items_fit(sub_origin: type, sup_origin: type, sub_args: tuple, sup_args: tuple) -> bool:
    """A generic's items: the expected type's variance decides (``list[bool]`` is a
    ``Sequence[int]``, not a ``list[int]``)."""
    if not sup_args or not sub_args:  # a bare list is list[Any]
        return True
    fixed = sup_args[-1:] != (Ellipsis,)
    if issubclass(sub_origin, tuple) and not (issubclass(sup_origin, tuple) and fixed):
        return all(is_subtype(s, sup_args[0]) for s in sub_args if s is not Ellipsis)  # its items, as one
    if len(sub_args) != len(sup_args):
        return False
    if issubclass(sup_origin, INVARIANT) or issubclass(sup_origin, collections.abc.MutableSequence):
        return sub_args == sup_args
    if issubclass(sup_origin, collections.abc.Mapping):  # keys are looked up: invariant
        return sub_args[0] == sup_args[0] and is_subtype(sub_args[1], sup_args[1])
    return all(is_subtype(s, p) for s, p in zip(sub_args, sup_args))


def explain(class_path: str, protocol: type) -> str:
    """Why the class at ``class_path`` cannot fill a slot typed ``protocol``; empty when it can.

    One phrase for each cause, with its fix: the import fails (the plugin's own module, or a module
    it needs), the class is of another kind (it meets another contract), or it breaks this one.
    """
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as err:
        return import_failure(class_path, err)
    except (AttributeError, ValueError):
        return f"cannot import {class_path}: {module or 'it'} has no {name}; check the class_path ({LISTED})"
    if not inspect.isclass(cls):
        return f"{class_path} is not a class"
    problems = mismatches(cls, protocol)
    if not problems:
        return ""
    kinds = [other for other in contracts() if other is not protocol and conforms(cls, other)]
    if kinds:
        return wrong_kind(name, kinds[0], protocol)
    return f"{name} does not meet the {protocol.__name__} contract (nsa.contracts): {'; '.join(problems)}"


LISTED = "`nsa plugins` lists the installed plugins"


def contracts() -> list[type]:
    """The plugin contracts, in the order of ``nsa.registry.CONTRACTS``."""
    from nsa import contracts as module
    from nsa.registry import CONTRACTS

    return [getattr(module, name) for name in CONTRACTS.values()]


def wrong_kind(name: str, kind: type, wanted: type) -> str:
    """``LengthJudge is a StepJudge, not a PolicyLoss: the installed PolicyLoss plugins are ...``."""
    from nsa.registry import CONTRACTS, advertised

    group = next(group for group, contract in CONTRACTS.items() if contract == wanted.__name__)
    names = ", ".join(sorted({p.name for p in advertised((group,))}))
    return (
        f"{name} is a {kind.__name__}, not a {wanted.__name__}: the installed {wanted.__name__} plugins "
        f"({group}) are {names}"
    )


def import_failure(class_path: str, err: ImportError) -> str:
    """A module missing on the way to the plugin (a typo in its path) or one it imports (a dependency)."""
    from nsa.registry import advertised

    missing = getattr(err, "name", None)
    if missing and (class_path.startswith(f"{missing}.") or missing == class_path):
        return f"cannot import {class_path}: there is no module {missing}; check the class_path ({LISTED})"
    dists = {p.dist for p in advertised() if p.class_path == class_path}
    package = f"the package {', '.join(sorted(dists))}" if dists else "its package"
    if missing:
        return (
            f"cannot import {class_path}: {package} needs the module {missing}, which is not installed; install "
            f"what provides {missing.split('.')[0]} (its extras may list it)"
        )
    return f"cannot import {class_path} ({err}); reinstall {package}"
