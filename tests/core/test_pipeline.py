"""The data stages on a tiny real model with scripted answers: golden statistics, caching.

Scripted answers (tests/scripted.py), the same four for each of three problems:
  a0 "2 + 3 = 5 | The answer is \\boxed{5}."     right for "sum" (5)
  a1 "2 + 3 = 6 | The answer is \\boxed{6}."     right for "six" (6)
  a2 "2 * 3 = 6 | 2 + 3 = 5 | So \\boxed{7}"     always wrong
  a3 "Hmm. | I give up."                         no final answer
("|" marks a blank line, the paragraph segmenter's step boundary.)

By hand:
- 12 answers, 2 correct; a3 has no answer three times.
- "hard" (100) has no right answer: dropped. 2 questions kept, 8 answers, 6 negatives.
- Steps of the negatives: sum: a1 (2), a2 (3), a3 (2); six: a0 (2), a2 (3), a3 (2) = 14.
- ArithmeticJudge (no claim scores 1): only "2 + 3 = 6" is false -> 13 of 14 correct.
- A strict judge (no claim scores 0) accepts only true claims:
  sum: a2 "2 * 3 = 6", "2 + 3 = 5" (2); six: a0 "2 + 3 = 5" (1), a2 (2) -> 5.
  Consensus all = 5 (strict's steps are a subset), any = 13, majority of 2 (needs 2) = 5.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nsa.commands import NSACLI
from tests.recipe import tiny_recipe

STRICT = {"class_path": "nsa.plugins.judges.arithmetic.ArithmeticJudge", "init_args": {"no_claim_score": 0.0}}
LENIENT = {"class_path": "nsa.plugins.judges.arithmetic.ArithmeticJudge"}


def prepare(recipe: Path, *overrides: str):
    cli = NSACLI(["--config", str(recipe), *overrides], run=False)
    cli.datamodule.run_stages()
    return cli.datamodule


def stage_dirs(cache: Path, stage: str) -> int:
    return len(list((cache / stage).iterdir()))


def test_stage_statistics_match_hand_count(tmp_path, tiny_model):
    """The scripted answers a0 "2 + 3 = 5 | boxed 5", a1 "2 + 3 = 6 | boxed 6", a2 "2 * 3 = 6 | 2 + 3 = 5 |
    boxed 7" and a3 "Hmm. | I give up." (no final answer) to sum (5), six (6) and hard (100): sum and six
    are kept (one right answer each), hard is all wrong. Their negatives, sum's a1 a2 a3 and six's a0 a2
    a3, have 7 + 7 = 14 steps; the arithmetic judge fails only "2 + 3 = 6", so it passes 13. The consensus
    then rejects the 4 last steps that state a wrong final answer (a1 and a2 in sum, a0 and a2 in six;
    a3 states none): 9."""
    stats = prepare(tiny_recipe(tmp_path, tiny_model)).stats
    assert stats["answers"] == 12 and stats["answers_correct"] == 2
    assert stats["answers_no_answer"] == 3
    assert stats["questions_kept"] == 2 and stats["questions_all_wrong"] == 1
    assert stats["answers_kept"] == 8 and stats["negatives"] == 6
    assert stats["steps"] == 14
    assert stats["steps_correct/ArithmeticJudge"] == 13 and stats["steps_correct/consensus"] == 9
    assert 0 < stats["tokens_correct/consensus"] < stats["tokens_negative"]


def test_rows_carry_masks_and_behaviour_logprobs(tmp_path, tiny_model):
    rows = prepare(tiny_recipe(tmp_path, tiny_model)).stages[-1].dataset
    for row in rows:
        n = len(row["response_ids"])
        assert len(row["nsa_mask"]) == len(row["ref_logprobs"]) == n
        assert all(lp <= 0 for lp in row["ref_logprobs"])
    # a1 for "sum": its first step "2 + 3 = 6" is wrong, its last states the wrong 6: nothing is mined
    wrong = next(r for r in rows if r["group"] == "sum" and r["response"].startswith("2 + 3 = 6"))
    assert wrong["step_labels"] == [False, False] and not any(wrong["nsa_mask"])
    # a2 for "sum": its two sound steps are mined, the last ("So boxed 7") is not
    sound = next(r for r in rows if r["group"] == "sum" and r["response"].startswith("2 * 3 = 6"))
    assert sound["step_labels"] == [True, True, False] and sound["nsa_mask"][0] and not sound["nsa_mask"][-2]
    for row in rows:  # a right answer mines nothing; every other negative mines something
        assert any(row["nsa_mask"]) == (row["reward"] <= 0.5 and row["response"] != wrong["response"])


# lenient passes 13 steps, strict (no_claim_score 0) the 5 with a true claim; the 4 steps stating a
# wrong final answer claim nothing, so only "any" loses them to the rule: 13 - 4 = 9
@pytest.mark.parametrize(("rule", "expected"), [("all", 5), ("any", 9), ("majority", 5)])
def test_consensus_rules_reuse_every_model_stage(tmp_path, tiny_model, rule, expected):
    recipe = tiny_recipe(tmp_path, tiny_model, judges=[LENIENT, STRICT])
    cache = tmp_path / "cache"
    first = prepare(recipe).stats
    assert first["steps_correct/ArithmeticJudge1"] == 13 and first["steps_correct/ArithmeticJudge2"] == 5
    stats = prepare(recipe, f"--data.consensus.init_args.rule={rule}").stats
    assert stats["steps_correct/consensus"] == expected
    # sampling, verifying, pi_ref, segmenting and judging ran once; only the labels were recomputed
    reused = ("sample", "verify", "groups", "behaviour", "segment", "judge")
    assert [stage_dirs(cache, s) for s in reused] == [1, 1, 1, 1, 1, 2]
    assert stage_dirs(cache, "label") == (1 if rule == "all" else 2)


def test_changing_a_threshold_rejudges_nothing(tmp_path, tiny_model):
    """ArithmeticJudge scores 0 or 1, so thresholds 0.5 and 1.0 label alike; the label stage runs again
    (its config changed) and the judge stage does not."""
    first = prepare(tiny_recipe(tmp_path, tiny_model)).stats
    raised = {**LENIENT, "init_args": {"threshold": 1.0}}
    stats = prepare(tiny_recipe(tmp_path, tiny_model, judges=[raised])).stats
    assert stats["steps_correct/consensus"] == first["steps_correct/consensus"]
    assert stage_dirs(tmp_path / "cache", "judge") == 1 and stage_dirs(tmp_path / "cache", "label") == 2
    assert stage_dirs(tmp_path / "cache", "behaviour") == 1


def test_single_judge_ablation_reuses_both_judges_scores(tmp_path, tiny_model):
    """'Strict only' is the second judge alone: 5 steps (hand count above), no model re-run."""
    recipe = tiny_recipe(tmp_path, tiny_model, judges=[LENIENT, STRICT])
    prepare(recipe)
    only = "--data.consensus.init_args.judges=[ArithmeticJudge2]"
    stats = prepare(recipe, only).stats
    assert stats["steps_correct/consensus"] == 5
    assert stage_dirs(tmp_path / "cache", "judge") == 2 and stage_dirs(tmp_path / "cache", "label") == 2


def test_stages_rerun_in_one_job_read_the_cache(tmp_path, tiny_model):
    """A second run of the same stages in one process (a sweep's next cell) gets fresh team
    keys and reads every stage from the cache: the same rows."""
    from nsa.pipeline import run
    from nsa.team import Team

    datamodule = prepare(tiny_recipe(tmp_path, tiny_model))
    team = Team.alone()
    first, again = run(datamodule.recipe, team), run(datamodule.recipe, team)
    assert again[-1].dataset["response_ids"] == first[-1].dataset["response_ids"]
    assert [o.fingerprint for o in again] == [o.fingerprint for o in datamodule.stages]
