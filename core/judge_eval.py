"""`nsa judge-eval`: how well a step judge finds the first wrong step (ProcessBench-style).

Each line of the file is {"id", "problem", "steps": [...], "label": k}, where k is the index
of the first wrong step, or -1 when every step is right. The judge scores the steps of the
solution (joined by blank lines); its prediction is the first step scored below its
threshold, or -1. As in ProcessBench: accuracy on erroneous items (the index must match),
accuracy on correct items (must predict -1), and their harmonic mean (F1).
"""

from __future__ import annotations

import json
from pathlib import Path

from nsa.contracts import Span, StepItem, StepJudge, passes
from nsa.errors import NSAError

FIELDS = ("problem", "steps", "label")


def read_items(path: str) -> list[dict]:
    if not Path(path).is_file():
        raise NSAError(f"judge-eval file not found: {path}")
    items = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for n, item in enumerate(items):
        missing = [f for f in FIELDS if f not in item]
        if missing:
            raise NSAError(f"{path}: line {n + 1} has no field {missing[0]!r} (needs {', '.join(FIELDS)})")
    return items


def as_step_item(item: dict) -> StepItem:
    """The steps joined by blank lines, each span keeping its separator (spans tile the text)."""
    spans: list[Span] = []
    position = 0
    for k, step in enumerate(item["steps"]):
        end = position + len(step) + (2 if k < len(item["steps"]) - 1 else 0)
        spans.append((position, end))
        position = end
    return StepItem(item["problem"], "\n\n".join(item["steps"]), spans)


def first_wrong(scores: list[float | None], threshold: float) -> int | None:
    """Index of the first step scored below threshold; unjudged steps are not evidence.

    An item with no judged step at all (an LLM reply that failed) predicts nothing: a miss,
    as ProcessBench counts an unparsable reply.
    """
    if scores and all(s is None for s in scores):
        return None
    return next((k for k, s in enumerate(scores) if s is not None and not passes(s, threshold)), -1)


def judge_eval(file: str, judge: StepJudge) -> dict[str, float]:
    """Score ``judge`` on ``file`` and print the ProcessBench metrics.

    Args:
        file: a ProcessBench-style jsonl file (problem, steps, label).
        judge: any step judge plugin, with its threshold.
    """
    items = read_items(file)
    scores = judge.score([as_step_item(item) for item in items])
    predicted = [first_wrong(s, judge.threshold) for s in scores]
    erroneous = [p == item["label"] for p, item in zip(predicted, items) if item["label"] >= 0]
    correct = [p == -1 for p, item in zip(predicted, items) if item["label"] < 0]
    acc_err = sum(erroneous) / max(1, len(erroneous))
    acc_ok = sum(correct) / max(1, len(correct))
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok else 0.0
    unjudged = float(sum(p is None for p in predicted))
    result = {"items": float(len(items)), "acc_erroneous": acc_err, "acc_correct": acc_ok, "f1": f1}
    result["unjudged_items"] = unjudged
    print(f"{type(judge).__name__} on {file}: {len(erroneous)} erroneous, {len(correct)} correct items")
    print(f"  accuracy on erroneous {acc_err:.1%}  on correct {acc_ok:.1%}  F1 {f1:.1%}  (unjudged {unjudged:g})")
    return result


def run(args: list[str]) -> dict[str, float]:
    """Parse ``nsa judge-eval`` arguments (a config file or flags) and evaluate."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="nsa judge-eval", description=__doc__.splitlines()[0], exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML file with these options")
    parser.add_function_arguments(judge_eval)
    config = parser.parse_args(args)
    init = parser.instantiate_classes(config)
    return judge_eval(init.file, init.judge)
