"""Reading a judge's reply: the verdict schema a constrained decoder follows, and the tolerant parser.

The reply is untrusted text: the last JSON verdict list in it (fenced or in prose, found
scanning back from the end), a bare list of booleans, or ``Step 3: incorrect`` lines (the
verdict word alone) are read; anything else, a verdict list of the wrong length, or a reply
still inside ``<think>`` leaves that answer's steps unjudged. Nothing is ever "correct" by
default. Every backend of ``LLMJudge`` hands its reply text here.
"""

from __future__ import annotations

import json
import re
from typing import Any

_MAX_REPLY_CHARS = 200_000  # bounds the JSON scan on runaway replies
# Characters the backward JSON scan may decode in all before it calls the reply malformed.
# Prose and LaTeX braces fail at once; only pathological nesting spends this.
_MAX_DECODE_WORK = 4_000_000


def schema(num_steps: int | None) -> dict[str, Any]:
    """The JSON schema of a reply: one ``{"step", "correct"}`` object per step. Given the step
    count, exactly that many, numbered 1..n, so a constrained decoder cannot stop early or
    ramble on (a length the parser would refuse anyway)."""
    step: dict[str, Any] = {"type": "integer"}
    verdicts: dict[str, Any] = {"type": "array"}
    if num_steps:
        step.update(minimum=1, maximum=num_steps)
        verdicts.update(minItems=num_steps, maxItems=num_steps)
    verdicts["items"] = {
        "type": "object",
        "properties": {"step": step, "correct": {"type": "boolean"}},
        "required": ["step", "correct"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"verdicts": verdicts},
        "required": ["verdicts"],
        "additionalProperties": False,
    }


_TRUE = {"true", "correct", "yes", "right", "valid", "1"}
_FALSE = {"false", "incorrect", "no", "wrong", "invalid", "0"}
_VERDICT_KEYS = ("verdicts", "steps", "labels", "judgements", "judgments", "results")
_CORRECT_KEYS = ("correct", "is_correct", "verdict", "label")
# The verdict word must be the whole rest of the line (punctuation and markup aside, no "?"),
# so "Step 1: Right triangle ..." or "Step 2: Correct? No, it is wrong" are not verdicts.
_STEP_LINE = re.compile(
    r"(?im)^[^\w\n]*step\s*(\d+)\b[^\w\n]*(incorrect|correct|wrong|right|true|false|invalid|valid)[^\w\n?]*$"
)
_JSON_START = re.compile(r"[\[{]")


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _as_step(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _entries(value: Any) -> list[tuple[int | None, bool | None]] | None:
    """(step number or None, verdict or None) per entry of a JSON verdict list; None if not one."""
    if isinstance(value, dict):
        key = next((k for k in _VERDICT_KEYS if k in value), None)
        value = value[key] if key else None
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(v, (dict, bool)) for v in value):
        return None
    out: list[tuple[int | None, bool | None]] = []
    for entry in value:
        if isinstance(entry, bool):
            out.append((None, entry))
            continue
        verdict = next((entry[k] for k in _CORRECT_KEYS if k in entry), None)
        out.append((_as_step(entry.get("step")), _as_bool(verdict)))
    return out


def _last_json_verdicts(text: str) -> tuple[list[tuple[int | None, bool | None]] | None, bool]:
    """The verdict-shaped JSON value ending last in ``text`` (the outermost on a tie), and whether
    the scan finished.

    Every ``[`` / ``{`` is tried as a start, from the end back to the beginning, so no amount of
    text after an earlier draft can hide the final answer, and a list nested in a verdict entry
    never wins over the verdict list around it. The scan stops (unfinished: the caller calls the
    reply malformed, never falls back to an earlier value) once it has decoded
    ``_MAX_DECODE_WORK`` characters, which only pathological nesting reaches.
    """
    decoder, work = json.JSONDecoder(), 0
    best: tuple[int, list[tuple[int | None, bool | None]]] | None = None
    for start in reversed([m.start() for m in _JSON_START.finditer(text)]):
        if work > _MAX_DECODE_WORK:
            return None, False
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as err:
            work += err.pos - start + 1
            continue
        except (ValueError, RecursionError):  # deep nesting overflows the C scanner; huge ints
            work += len(text) - start
            continue
        work += end - start
        entries = _entries(value)
        if entries is not None and (best is None or end >= best[0]):
            best = (end, entries)
    return (best[1] if best else None), True


def _resolve(entries: list[tuple[int | None, bool | None]], num_steps: int) -> tuple[list[bool] | None, str]:
    """Verdicts in step order, or None and why (``malformed`` / ``wrong_length``)."""
    if len(entries) != num_steps:
        return None, "wrong_length"
    if any(verdict is None for _, verdict in entries):
        return None, "malformed"
    numbers = [step for step, _ in entries]
    if all(n is None for n in numbers):
        return [bool(v) for _, v in entries], "ok"
    if sorted(n for n in numbers if n is not None) != list(range(1, num_steps + 1)):
        return None, "malformed"  # duplicates, gaps, 0-based, or numbered only in part
    by_step = {step: verdict for step, verdict in entries}
    return [bool(by_step[n]) for n in range(1, num_steps + 1)], "ok"


def parse_verdicts(reply: str, num_steps: int) -> tuple[list[bool] | None, str]:
    """Read a judge's reply: per-step verdicts and ``ok``, or None and ``malformed`` / ``wrong_length``.

    The last JSON verdict list in the reply wins (models reason first, answer last); without
    one, ``Step k: correct/incorrect`` lines are read. A reply still inside ``<think>`` is malformed.
    """
    if reply.rfind("<think>") > reply.rfind("</think>"):
        return None, "malformed"  # the thoughts never ended: whatever follows is not an answer
    text = reply[-_MAX_REPLY_CHARS:]
    if "</think>" in text:  # reasoning models: only the part after the thoughts is the answer
        text = text.rsplit("</think>", 1)[1]
    entries, finished = _last_json_verdicts(text)
    if not finished:
        return None, "malformed"
    if entries is not None:
        return _resolve(entries, num_steps)
    lines = [(int(step), word.lower() in _TRUE) for step, word in _STEP_LINE.findall(text)]
    if not lines:
        return None, "malformed"
    numbered: dict[int, bool] = {}
    for step, verdict in lines:
        if numbered.setdefault(step, verdict) != verdict:
            return None, "malformed"  # the same step called both correct and incorrect
    return _resolve(list(numbered.items()), num_steps)
