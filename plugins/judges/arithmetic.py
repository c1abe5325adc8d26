"""A rule judge that checks the arithmetic a step states, and nothing else.

A step is scored on its own text (``item.response[start:end]``):

* 0.0 if any arithmetic claim in it is false,
* 1.0 if it makes at least one claim and all of them hold,
* ``no_claim_score`` if it makes no claim this judge can check.

It checks arithmetic only, not reasoning: ``12 * 7 = 84`` passes even when the problem
needed ``12 * 8``, and a step with a wrong plan but no equation gets ``no_claim_score``.

What counts as a claim
    Both sides of an ``=`` must be plain arithmetic: numbers, ``+ - * / **`` and
    parentheses. In a chain ``a = b = c`` every ``=`` is one claim (``a = b``, then
    ``b = c``); a side that is not arithmetic (``x``, ``n``, ``f(2)``) drops the links
    that touch it and keeps the others. Runs of math stop at a line break.

Normalisation before parsing
    ``×``, ``·``, ``\\times``, ``\\cdot``, and ``x`` / ``times`` / ``multiplied by``
    between numbers become ``*``; ``÷``, ``\\div``, ``divided by`` become ``/``; ``−``
    and ``minus`` become ``-``, ``plus`` becomes ``+``; ``\\frac{a}{b}`` becomes
    ``((a)/(b))``, ``^`` becomes ``**`` and braces become parentheses. ``$``, ``\\(``,
    ``\\[``, ``&``, ``\\left``/``\\right``, ``\\boxed`` and markdown ``**bold**`` are
    dropped. Thousands commas are removed (``1,200`` -> ``1200``: a comma followed by
    exactly three digits).

Equality
    Two values are equal within ``rel_tol`` (plus an absolute 1e-12 for results near
    zero). Rounding rule: when one side is a bare decimal number with d >= 1 written
    decimals, the other side may differ by up to half a unit in the d-th place, so
    ``10 / 3 = 3.33`` and ``10 / 3 = 3.3`` pass while ``10 / 3 = 3.4`` and
    ``2 / 3 = 0.66`` (truncated, not rounded) fail. A whole number on either side gets
    no rounding slack: ``10 / 3 = 3`` fails.

    Running computations are read the way models write them: in
    ``12 * 7 = 84 - 15 = 69`` the link ``12 * 7 = 84 - 15`` holds because the right
    side starts with the number 84 that ``12 * 7`` equals and then carries on.

Safety and limits
    Sides are parsed with :mod:`ast` and evaluated by walking only Constant (int,
    float), UnaryOp (+, -) and BinOp (+, -, *, /, **) nodes; anything else (names,
    calls, attributes, strings) means "not a claim". Nothing is ever passed to
    ``eval`` or ``exec``. Powers are refused when the exponent exceeds 64 in magnitude
    or the base exceeds 1e100, so ``9**9**9`` is dropped at once instead of running for
    minutes; sides longer than 200 characters, divisions by zero, overflows and complex
    results are dropped too.

    Being a regex reader of free text, it errs towards missing claims rather than
    inventing false ones: a side glued to a word or symbol (``x_1 = 5``, ``= 2y``,
    ``= 50%``, ``= 5!``), a leading sign after a word (``y - 3 = 9``), or a side next
    to a word that changes its meaning (``half of 20 = 10``, ``= 3 times the number``)
    is not read. Percentages, roots, factorials, ``==``/``<=`` and implicit
    multiplication are not checked.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Sequence
from itertools import pairwise

from nsa.contracts import StepItem

_MAX_SIDE_CHARS = 200
_MAX_EXPONENT = 64
_MAX_POWER_BASE = 10**100
_ABS_TOL = 1e-12

# ---------------------------------------------------------------------------- evaluation


class _NotArithmetic(Exception):
    """Raised when a parsed side holds anything but bounded arithmetic."""


def _power(base: float, exponent: float) -> float:
    # 9**9**9 would run for minutes and eat memory: bound both operands before computing.
    if abs(exponent) > _MAX_EXPONENT or abs(base) > _MAX_POWER_BASE:
        raise _NotArithmetic("power too large")
    return base**exponent


_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: _power,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _eval_node(node: ast.AST) -> float:
    # A whitelist walk: every node type not named here is refused, so no code can run.
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_eval_node(node.left), _eval_node(node.right))
    raise _NotArithmetic(type(node).__name__)


def evaluate(expr: str) -> float | None:
    """The value of a pure arithmetic expression, or None if it is anything else."""
    if len(expr) > _MAX_SIDE_CHARS:
        return None  # bounds parser depth and the size of intermediate integers
    try:
        value = float(_eval_node(ast.parse(expr.strip(), mode="eval").body))
    except (SyntaxError, ValueError, TypeError, ArithmeticError, RecursionError, MemoryError, _NotArithmetic):
        # TypeError: float() of a complex result, e.g. (-8) ** (1 / 3).
        return None
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------- normalisation

_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\\(?:times|cdot)(?![A-Za-z])"), " * "),
    (re.compile(r"\\div(?![A-Za-z])"), " / "),
    (re.compile(r"\\(?:left|right|boxed)(?![A-Za-z])"), ""),
    # Math delimiters, LaTeX spacing and alignment marks carry no arithmetic.
    (re.compile(r"\\?\$|\\[()\[\]]|\\[,;:! ]|&"), " "),
    # Numbered-list markers like "1)" would otherwise glue onto the expression after them.
    (re.compile(r"(?m)^([^\S\n]*)\d+\)(?=\s)"), r"\1"),
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),
    (re.compile(r"(?<=[\d)])\s*(?:x|times|multiplied by)\s*(?=[\d(])", re.IGNORECASE), " * "),
    (re.compile(r"(?<=[\d)])\s*divided by\s*(?=[\d(])", re.IGNORECASE), " / "),
    (re.compile(r"(?<=[\d)])\s*plus\s*(?=[\d(])", re.IGNORECASE), " + "),
    (re.compile(r"(?<=[\d)])\s*minus\s*(?=[\d(])", re.IGNORECASE), " - "),
    # A `**` between operands is a power; any other `**` is markdown bold. Park powers as `^`.
    (re.compile(r"(?<=[\d)])\s*\*\*\s*(?=[-+]?[\d(])"), "^"),
    (re.compile(r"\*\*"), ""),
    (re.compile(r"\^"), "**"),
)
_CHARS = str.maketrans({"×": "*", "·": "*", "⋅": "*", "÷": "/", "−": "-", "{": "(", "}": ")"})


def normalise(text: str) -> str:
    """Rewrite LaTeX, Unicode and word operators into Python arithmetic syntax."""
    previous = None
    while previous != text:  # innermost \frac first, until nested ones are all gone
        previous, text = text, _FRAC.sub(r"((\1)/(\2))", text)
    text = text.translate(_CHARS)
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)
    return text


# ---------------------------------------------------------------------------- claims

_NUM = r"(?:\d+(?:\.\d+)?|\.\d+)"
_TOKEN = rf"(?:{_NUM}|[-+*/()=])"
# Tokens joined by horizontal space only, so a run of math never crosses a line break.
_RUN = re.compile(rf"{_TOKEN}(?:[^\S\n]*{_TOKEN})*")
_LEFT_BOUNDARY = ":;,?"
_RIGHT_BOUNDARY = ".,;:?"
# Words that make a number next to them part of a larger, unread expression.
_LEFT_WORDS = frozenset(
    "of by times plus minus over than divided multiplied half twice double triple quarter "
    "third sqrt root log ln sin cos tan exp mod".split()
)
_RIGHT_WORDS = frozenset(
    "of times plus minus over divided multiplied squared cubed percent factorial mod modulo choose".split()
)


def _left_tainted(text: str, start: int, first_side: str) -> bool:
    """True if a run's first side is the tail of a larger expression the run did not read."""
    before = text[:start]
    if before and not (before[-1].isspace() or before[-1] in _LEFT_BOUNDARY):
        return True  # glued to a word or symbol: `x_1 = 5`, `f(2) = 4`
    head = before.rstrip()
    if first_side[:1] in ("+", "-") and head and head[-1] not in _LEFT_BOUNDARY:
        return True  # `y - 3 = 9`: the sign is a binary operator whose left operand is a variable
    word = re.search(r"[A-Za-z]+$", head)
    return word is not None and word.group().lower() in _LEFT_WORDS  # `half of 20 = 10`


def _right_tainted(text: str, end: int) -> bool:
    """True if a run's last side goes on past what the run read."""
    after = text[end:]
    if after and not (after[0].isspace() or after[0] in _RIGHT_BOUNDARY):
        return True  # glued: `= 2y`, `= 50%`, `= 5!`
    word = re.match(r"\s*([A-Za-z]+)", after)
    return word is not None and word.group(1).lower() in _RIGHT_WORDS  # `= 3 times the number`


def _run_claims(text: str, run: re.Match[str]) -> list[tuple[str, str]]:
    sides = [" ".join(side.split()) for side in run.group().split("=")]
    usable = [evaluate(side) is not None for side in sides]
    usable[0] = usable[0] and not _left_tainted(text, run.start(), sides[0])
    usable[-1] = usable[-1] and not _right_tainted(text, run.end())
    links = pairwise(zip(sides, usable, strict=True))
    return [(lhs, rhs) for (lhs, lhs_ok), (rhs, rhs_ok) in links if lhs_ok and rhs_ok]


def find_claims(text: str) -> list[tuple[str, str]]:
    """Every checkable ``lhs = rhs`` link in ``text``, as normalised expression strings."""
    norm = normalise(text)
    claims: list[tuple[str, str]] = []
    for run in _RUN.finditer(norm):
        if "=" in run.group():
            claims.extend(_run_claims(norm, run))
    return claims


def _decimal_places(text: str) -> int:
    """Decimals written in a bare number (``3.33`` -> 2); 0 for integers and expressions."""
    match = re.fullmatch(r"\s*[-+]?\d*\.(\d+)\s*", text)
    return len(match.group(1)) if match else 0


def _equal(value: float, target: float, target_text: str, rel_tol: float) -> bool:
    """True if ``value`` equals ``target``, or rounds to it at the decimals written in ``target_text``."""
    if math.isclose(value, target, rel_tol=rel_tol, abs_tol=_ABS_TOL):
        return True
    places = _decimal_places(target_text)
    # Half a unit in the last written place, with float slack so exact halves round either way.
    return places > 0 and abs(value - target) <= 0.5 * 10.0**-places * (1 + 1e-9)


_LEADING_NUMBER = re.compile(rf"\s*({_NUM})\s*[-+*/]")


def check_claim(lhs: str, rhs: str, rel_tol: float = 1e-6) -> bool:
    """Whether ``lhs = rhs`` holds; raises ValueError if either side is not arithmetic."""
    left, right = evaluate(lhs), evaluate(rhs)
    if left is None or right is None:
        raise ValueError(f"not an arithmetic claim: {lhs!r} = {rhs!r}")
    if _equal(left, right, rhs, rel_tol) or _equal(right, left, lhs, rel_tol):
        return True
    # Running computation: `12 * 7 = 84 - 15` states 12 * 7 = 84 and then carries on from 84.
    lead = _LEADING_NUMBER.match(rhs)
    return lead is not None and _equal(left, float(lead.group(1)), lead.group(1), rel_tol)


# ----------------------------------------------------------------------------- judge


class ArithmeticJudge:
    """Scores a step 1.0 if all its arithmetic claims hold, 0.0 if one fails, else ``no_claim_score``."""

    def __init__(self, threshold: float = 0.5, no_claim_score: float = 1.0, rel_tol: float = 1e-6) -> None:
        if rel_tol < 0:
            raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
        self.threshold = threshold
        self.no_claim_score = no_claim_score
        self.rel_tol = rel_tol

    def score(self, items: Sequence[StepItem]) -> list[list[float | None]]:
        return [[self._score_step(item.response[start:end]) for start, end in item.spans] for item in items]

    def _score_step(self, text: str) -> float:
        claims = find_claims(text)
        if not claims:
            return self.no_claim_score
        return 1.0 if all(check_claim(lhs, rhs, self.rel_tol) for lhs, rhs in claims) else 0.0
