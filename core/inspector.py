"""``nsa inspect --config R``: one self-contained HTML page of the judged wrong answers.

For each negative: its steps coloured by the consensus label (mined: trained with weight
beta; rejected: weight 1), each judge's score and verdict per step, and the token weights the
loss gives. On top, the counts: steps and tokens judged correct per judge and by consensus,
and how often the judges agree. The data stages are the recipe's (cached: nothing is judged
again); the page is written to a file and logged to a new MLflow run as an artifact.
"""

from __future__ import annotations

import argparse
import html
import itertools
import sys
from pathlib import Path

from datasets import Dataset

from nsa.contracts import passes
from nsa.errors import NSAError
from nsa.stages.steps import states_a_wrong_answer

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.response { white-space: pre-wrap; font-family: monospace; border: 1px solid #ddd; padding: 0.6em; }
.step { border-radius: 3px; }
.mined { background-color: rgb(200, 247, 197); }
.rejected { background-color: rgb(247, 197, 197); }
.answer { margin-bottom: 2.5em; }
.legend span { padding: 0 0.5em; margin-right: 1em; }
"""


def verdict(score: float | None, threshold: float) -> str:
    """A judge's score and verdict as a reader sees them: ``0.87 ✓``, ``0.12 ✗``, ``unjudged``."""
    if score is None:
        return "unjudged"
    return f"{score:.2f} {'✓' if passes(score, threshold) else '✗'}"


def agreement(rows: Dataset, names: list[str], thresholds: list[float]) -> list[tuple[str, int, int]]:
    """Per pair of judges: (pair, steps both judged and agreed on, steps both judged)."""
    out = []
    for (a, ta), (b, tb) in itertools.combinations(zip(names, thresholds), 2):
        pairs = [
            (x >= ta, y >= tb)
            for xs, ys in zip(rows[f"scores/{a}"], rows[f"scores/{b}"])
            for x, y in zip(xs, ys)
            if x is not None and y is not None
        ]
        out.append((f"{a} / {b}", sum(x == y for x, y in pairs), len(pairs)))
    return out


def summary_html(stats: dict[str, float], names: list[str], pairs: list[tuple[str, int, int]]) -> str:
    steps, tokens = stats["steps"], stats["tokens_negative"]
    head = "".join(f"<th>{h}</th>" for h in ("judged correct by", "steps", "of steps", "tokens", "of tokens"))
    lines = [f"<table id='counts'><tr>{head}</tr>"]
    for who in [*names, "consensus"]:
        s, t = stats[f"steps_correct/{who}"], stats[f"tokens_correct/{who}"]
        cells = (html.escape(who), f"{s:g}", _pct(s, steps), f"{t:g}", _pct(t, tokens))
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append(f"</table><p>{steps:g} steps and {tokens:g} tokens in the judged negatives.</p>")
    if pairs:
        lines.append(
            "<table id='agreement'><tr><th>judges</th><th>agree</th><th>both judged</th><th>agreement</th></tr>"
        )
        lines += [
            f"<tr><td>{html.escape(p)}</td><td>{a}</td><td>{n}</td><td>{_pct(a, n)}</td></tr>" for p, a, n in pairs
        ]
        lines.append("</table>")
    return "\n".join(lines)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def answer_html(
    row: dict, number: int, names: list[str], thresholds: list[float], beta: float | None, rule: bool = True
) -> str:
    """One negative: its steps coloured by consensus label, then a table of verdicts and weights. ``rule``:
    data.reject_wrong_final_step, which rejects the step stating the wrong final answer, is on."""
    labels, text = row["step_labels"], row["response"]
    final = len(labels) - 1 if rule and states_a_wrong_answer(row) else None
    spans = []
    for k, ((start, end), mined) in enumerate(zip(row["spans"], labels)):
        kind = "mined" if mined else "rejected"
        spans.append(f"<span class='step {kind}' data-step='{k + 1}'>{html.escape(text[start:end])}</span>")
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    table = [f"<table class='verdicts'><tr><th>step</th>{head}<th>consensus</th><th>weight</th></tr>"]
    for k, mined in enumerate(labels):
        cells = "".join(f"<td>{verdict(row[f'scores/{n}'][k], t)}</td>" for n, t in zip(names, thresholds))
        weight = f"{beta:g}" if mined and beta is not None else "1"
        said = "mined" if mined else "rejected: states the wrong final answer" if k == final else "rejected"
        table.append(f"<tr><td>{k + 1}</td>{cells}<td>{said}</td><td>{weight}</td></tr>")
    return (
        f"<section class='answer' id='answer-{number}'><h2>{number}. {html.escape(row['question'])}</h2>"
        f"<p class='meta'>group {html.escape(row['group'])}: reward {row['reward']:g}, "
        f"group mean {row['reward_mean']:.2f}</p>"
        f"<div class='response'>{''.join(spans)}</div>" + "\n".join(table) + "</table></section>"
    )


def page(
    rows: Dataset,
    stats: dict[str, float],
    names: list[str],
    thresholds: list[float],
    beta: float | None,
    rule: bool = True,
) -> str:
    negatives = [row for row in rows if row["spans"]]
    final = (
        "a negative's last step, which states its wrong final answer, is rejected whatever the judges say"
        if rule
        else "the step stating a negative's wrong final answer is left to the judges"
    )
    weights = f"mined steps weigh beta = {beta:g}, every other token 1" if beta is not None else "the loss has no beta"
    body = [
        "<h1>Judged negatives</h1>",
        f"<p id='weights'>{html.escape(weights)}.</p>",
        "<p class='legend'><span class='mined'>mined: every judge the consensus asks accepts it</span>"
        "<span class='rejected'>rejected</span></p>",
        f"<p id='final-step'>{html.escape(final)} (data.reject_wrong_final_step: {str(rule).lower()}).</p>",
        summary_html(stats, names, agreement(rows, names, thresholds)),
        *(answer_html(row, i + 1, names, thresholds, beta, rule) for i, row in enumerate(negatives)),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>nsa inspect</title>"
        f"<style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def run(args: list[str]) -> None:
    """``nsa inspect --config R [--output F.html] [--limit N]``."""
    from lightning.pytorch.loggers import MLFlowLogger

    from nsa.commands import parse_recipe
    from nsa.pipeline import judge_names

    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--output", default="runs/inspect.html")
    own.add_argument("--limit", type=int, default=200)
    known, rest = own.parse_known_args(args)
    cli = parse_recipe(rest, "nsa inspect", one_process=True)
    cli.datamodule.run_stages()
    labelled = next((out for out in cli.datamodule.stages if out.name == "label"), None)
    if labelled is None:
        raise NSAError("the recipe's data stages have no label stage to inspect")
    judges = cli.datamodule.recipe.judges
    rows = labelled.dataset.filter(lambda spans: bool(spans), input_columns="spans")
    rows = rows.select(range(min(known.limit, len(rows))))
    beta, rule = getattr(cli.model.loss, "beta", None), cli.datamodule.recipe.reject_wrong_final_step
    text = page(rows, labelled.stats, judge_names(judges), [j.threshold for j in judges], beta, rule)
    Path(known.output).parent.mkdir(parents=True, exist_ok=True)
    Path(known.output).write_text(text, encoding="utf-8")
    print(f"nsa: inspect: {len(rows)} judged negatives written to {known.output}", file=sys.stderr)
    for logger in cli.trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, known.output, "inspect")
            logger.experiment.set_tag(logger.run_id, "nsa.command", "inspect")
            print(f"nsa: inspect: page logged to MLflow run {logger.run_id}", file=sys.stderr)
