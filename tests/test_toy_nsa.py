"""The toy experiment (benchmarks/toy_nsa): its problems, its noisy solutions, its recipe and
sweep, and its table. The experiment itself takes about 25 minutes and is run by hand
(`python benchmarks/toy_nsa/run.py`); here a 3-step pretrained policy stands in for the
real one, only so the recipe and the sweep have a model folder to check."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nsa.cli import main
from nsa.contracts import StepItem
from nsa.plugins.judges.arithmetic import ArithmeticJudge
from nsa.plugins.segmenters.paragraph import ParagraphSegmenter

TOY = Path(__file__).resolve().parents[1] / "benchmarks" / "toy_nsa"


def load(name: str):
    """A script of benchmarks/toy_nsa as a module (they import each other by file name)."""
    sys.path.insert(0, str(TOY))
    try:
        spec = importlib.util.spec_from_file_location(f"toy_nsa_{name}", TOY / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # a dataclass looks its module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(TOY))


arithmetic = load("arithmetic")
ChainJudge = load("chain_judge").ChainJudge
PROBLEM = {"start": 3, "ops": [("+", 4), ("-", 5), ("*", 3)]}  # 3 + 4 = 7, 7 - 5 = 2, 2 * 3 = 6


def judged(text: str, question: str = "3 +4 -5 *3", judge=None) -> list[float | None]:
    """The oracle's (or ``judge``'s) score of each paragraph step of ``text``."""
    item = StepItem(question, text, ParagraphSegmenter().split(text))
    return (judge or ChainJudge()).score([item])[0]


def test_problems_are_seeded_chains_of_three_to_six_digit_steps():
    rows = arithmetic.problems(0, 200, "train")
    assert rows == arithmetic.problems(0, 200, "train") != arithmetic.problems(1, 200, "train")
    for row in rows:
        assert 3 <= len(row["ops"]) <= 6
        value = row["start"]
        assert row["question"].split()[0] == str(value)
        for op, arg in row["ops"]:
            value = arithmetic.apply(value, op, arg)
            assert 1 <= value <= arithmetic.MAX_VALUE
        assert row["answer"] == str(value)
    assert {len(row["ops"]) for row in rows} == {3, 4, 5, 6}


def test_no_training_or_pretraining_question_is_held_out():
    """The chains are few (a few thousand of 3 operations), so the streams would overlap by chance."""
    held_out = arithmetic.heldout(256)
    questions = {row["question"] for row in held_out}
    assert len(questions) == 256
    train = arithmetic.train(1, 256, held_out)
    assert len({row["question"] for row in train}) == 256 and not questions & {row["question"] for row in train}
    sft = arithmetic.problems(1, 5000, "sft", exclude=frozenset(questions), unique=False)
    assert not questions & {row["question"] for row in sft}
    assert len(arithmetic.problems(1, 5000, "sft")) == 5000  # the same stream unfiltered ...
    assert questions & {row["question"] for row in arithmetic.problems(1, 5000, "sft", unique=False)}  # ... hits it


def test_a_clean_solution_is_one_right_step_per_operation():
    text = arithmetic.solution(PROBLEM, random.Random(0), p_error=0.0, p_fix=0.0)
    assert text == "3 +4 = 7 | -5 *3\n\n7 -5 = 2 | *3\n\n2 *3 = \\boxed{6}"
    assert judged(text) == [1.0, 1.0, 1.0]


class Scripted(random.Random):
    """Draws given in advance: ``random()`` pops the next one, ``choice`` takes the first option."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self.draws = draws

    def random(self) -> float:
        return self.draws.pop(0)

    def choice(self, options):
        return options[0]


def test_an_uncorrected_slip_leaves_right_steps_before_it_and_a_wrong_answer():
    """Draws 0.9, 0.1, 0.9, 0.9 at p_error 0.5, p_fix 0.5: step 1 holds; step 2 slips (7 - 5 = 2,
    the slips 0, 1, 3, 4 kept >= 1 are 1, 3, 4: the first, 1, is written); the fix draw 0.9 >= 0.5
    leaves it; step 3 computes 1 * 3 = 3 from the slip, right arithmetic to a wrong answer (3, not 6)."""
    text = arithmetic.solution(PROBLEM, Scripted([0.9, 0.1, 0.9, 0.9]), p_error=0.5, p_fix=0.5)
    assert text == "3 +4 = 7 | -5 *3\n\n7 -5 = 1 | *3\n\n1 *3 = \\boxed{3}"
    assert judged(text) == [1.0, 0.0, 0.0]  # step 3 is built on the slip: wrong, by propagation
    assert judged(text, judge=ArithmeticJudge(no_claim_score=0.0)) == [1.0, 0.0, 1.0]  # its arithmetic holds


def test_corrected_slips_give_a_right_answer_with_wrong_steps_inside():
    """p_error 1, p_fix 1: steps 1 and 2 slip and are corrected (``wait, ...``); the last step slips
    and is never corrected (two boxed answers would read as a set): wrong, right, wrong, right, wrong."""
    text = arithmetic.solution(PROBLEM, random.Random(0), p_error=1.0, p_fix=1.0)
    steps = text.split("\n\n")
    assert steps[1] == "wait, 3 +4 = 7 | -5 *3" and steps[3] == "wait, 7 -5 = 2 | *3"
    assert judged(text) == [0.0, 1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("response", "scores"),
    [
        # a misread: the policy starts step 2 from 1 (not 9) and adds 7 (the problem subtracts
        # it); 1 + 7 = 8 holds, so ArithmeticJudge would call it right; later steps build on it
        ("3 +6 = 9 | -7 +5 +2\n\n1 +7 = 8 | -5 +2\n\n8 -5 = 3 | +2\n\n3 +2 = \\boxed{5}", [1, 0, 0, 0]),
        # a miscopied list (+2 became -7): step 1's result is right but its list is not, and every
        # later step carries the wrong list on (propagation), though each computes rightly
        ("3 +6 = 9 | -7 +5 -7\n\n9 -7 = 2 | +5 -7\n\n2 +5 = 7 | -7\n\n7 -7 = \\boxed{0}", [0, 0, 0, 0]),
        # a slip corrected: the restatement is right and so is everything after it
        (
            "3 +6 = 8 | -7 +5 +2\n\nwait, 3 +6 = 9 | -7 +5 +2\n\n"
            "9 -7 = 2 | +5 +2\n\n2 +5 = 7 | +2\n\n7 +2 = \\boxed{9}",
            [0, 1, 1, 1, 1],
        ),
        # a wrong correction, and steps past the last operation or out of format
        ("3 +6 = 8 | -7 +5 +2\n\nwait, 3 +6 = 10 | -7 +5 +2\n\n9 -7 = 2 | +5 +2", [0, 0, 1]),
        ("3 +6 -7 = 2 | +5 +2\n\n2 +5 = 7 | +2\n\n7 +2 = \\boxed{9}\n\n9 +0 = \\boxed{9}", [0, 0, 0, 0]),
    ],
)
def test_the_oracle_checks_each_step_against_the_problem_in_context(response, scores):
    """Question 3 +6 -7 +5 +2: the right steps are 3 +6 = 9, 9 -7 = 2, 2 +5 = 7, 7 +2 = 9 (boxed).
    Row 3: after a wrong correction the next step starts from the true 9 again, so it is right
    (it does not build on a slip). Row 4: the first step does two operations: it and everything
    after it mismatch, since each step is compared with the step of the same position."""
    assert judged(response, "3 +6 -7 +5 +2") == [float(s) for s in scores]


def metrics(avg: float, mined: float = 0.0, se: float = 2.0) -> dict[str, float]:
    """One seed's metrics as MLflow holds them (accuracies in percent, avg@4)."""
    return {
        "eval/toy/avg_at_4": avg,
        "eval/toy/avg_at_4_se": se,
        "eval/toy/pass_at_4": 90.0,
        "data/tokens_correct/consensus": mined,
        "data/tokens_negative": 200.0,
    }


def every_row(by_seed: dict) -> dict:
    """Results with every method and judge cell scoring ``by_seed``."""
    cells = [cell for _, cell in report.METHODS + report.JUDGES]
    return {cell: dict(by_seed) for cell in cells} | {"start": dict(by_seed)}


report = load("report")
stats = load("stats")


def test_the_long_setting_has_long_chains_and_late_slips():
    """Step k of 9 slips with 0.08 * (1 + 0.6 * (2k/8 - 1)): 0.032 at the first, 0.128 at the
    last, 0.08 on average; the long setting's chains have 7 to 10 operations and a stream of
    their own, while the short setting keeps the streams its results were drawn from."""
    long = arithmetic.SETTINGS["long"]
    rates = [arithmetic.slip_rate(long.p_error, long.late, k, 9) for k in range(9)]
    assert rates[0] == pytest.approx(0.032) and rates[-1] == pytest.approx(0.128)
    assert sum(rates) / 9 == pytest.approx(0.08)
    rows = arithmetic.problems(0, 200, "train", setting=long)
    assert {len(row["ops"]) for row in rows} == set(range(7, 11))
    assert arithmetic.problems(0, 5, "train", setting=arithmetic.SETTINGS["short"]) == arithmetic.problems(
        0, 5, "train"
    )


def test_the_long_setting_names_its_operations_and_the_oracle_reads_them(tmp_path):
    """Labelled: the question names each operation (``3 A+4 B-5 C*3``) and each step starts with
    its name and operation (``B-5: 7 -5 = 2``), so no step copies the list. The oracle checks the
    name too: a step that applies B's operation under the name C is wrong. The pretraining
    tokenizer adds the names, the colon and each operation as one token for the long setting
    only: the short one keeps its 31 tokens, so its policies and results stay as they were."""
    long = arithmetic.SETTINGS["long"]
    problem = {**PROBLEM, "question": "3 A+4 B-5 C*3"}
    text = arithmetic.solution(problem, random.Random(0), p_error=0.0, p_fix=0.0, setting=long)
    assert text == "A+4: 3 +4 = 7\n\nB-5: 7 -5 = 2\n\nC*3: 2 *3 = \\boxed{6}"
    assert judged(text, "3 A+4 B-5 C*3") == [1.0, 1.0, 1.0]
    misnamed = "A+4: 3 +4 = 7\n\nC-5: 7 -5 = 2\n\nC*3: 2 *3 = \\boxed{6}"
    slip = "A+4: 3 +4 = 8\n\nwait, A+4: 3 +4 = 7\n\nB-5: 7 -5 = 2\n\nC*3: 2 *3 = \\boxed{6}"
    assert judged(misnamed, "3 A+4 B-5 C*3") == [1.0, 0.0, 1.0]  # C follows from the true value 2 again
    assert judged(slip, "3 A+4 B-5 C*3") == [0.0, 1.0, 1.0, 1.0]
    assert arithmetic.problems(0, 1, "train", setting=long)[0]["question"].split()[1].startswith("A")
    pretrain = load("pretrain")
    assert len(pretrain.build_tokenizer(tmp_path / "short")) == 31
    long_tokenizer = pretrain.build_tokenizer(tmp_path / "long", labelled=True)
    assert len(long_tokenizer) == 31 + len(arithmetic.LABELS) + 1 + 18  # names, ":", the 18 operations
    assert long_tokenizer.tokenize("B-5: 7 -5") == ["B", "-5", ":", "Ġ", "7", "Ġ", "-5"]  # Ġ: byte-level space


def test_paired_interval_p_value_and_seeds_needed_golden():
    """Differences 1, 2, 3: mean 2, sd 1, se 1/sqrt 3 = 0.577. With 2 degrees of freedom the t
    distribution is F(t) = 1/2 + t / (2 sqrt(t^2 + 2)): t(0.975) solves t / sqrt(t^2 + 2) = 0.95,
    t^2 = 0.9025 * 2 / 0.0975 = 18.51, t = 4.303, half-width 4.303 * 0.577 = 2.484; the statistic
    2 / 0.577 = 3.464 leaves 1/2 - 3.464 / (2 sqrt 14) = 0.0371 per tail: p = 0.0742.
    Seeds for ±0.5 at sd 0.97: 16 give t(15) 2.131 * 0.97 / 4 = 0.517, 17 give t(16) 2.120 * 0.97
    / sqrt 17 = 0.499. Holm on p 0.01, 0.04, 0.03: 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, then
    max(0.06, 1 * 0.04) = 0.06."""
    result = stats.paired([1.0, 2.0, 3.0])
    assert (result.n, result.mean) == (3, 2.0)
    assert result.half_width == pytest.approx(2.484, abs=1e-3) and result.p == pytest.approx(0.0742, abs=1e-4)
    assert stats.paired([0.5, 0.5]).p == 0.0 and stats.paired([0.0, 0.0]).p == 1.0
    assert stats.seeds_needed(0.97, 0.5) == 17
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.power(0.0, 1.0, 20) == pytest.approx(0.05, abs=1e-6)  # no effect: found at alpha


def test_the_table_shows_mean_and_sample_std_over_seeds_and_the_paired_gain():
    """Start avg@4 40, 50, 60 over three seeds: mean 50.0, sample std sqrt((10^2 + 0 + 10^2) / 2) = 10.0.
    RFT 45, 58, 61: mean 54.7, std sqrt((9.67^2 + 3.33^2 + 6.33^2) / 2) = 8.5; its gains over the
    same seed's start (and over BCPG, which scored as the start) are 5, 8, 1: mean 4.7, std
    sqrt((0.33^2 + 3.33^2 + 3.67^2) / 2) = 3.5. The evaluation's se: 2.0 on every seed.
    Mined tokens 60, 100, 80 of 200 negatives' tokens: 30, 50, 40 %: mean 40.0, std 10.0."""
    start = {seed: metrics(a, m) for seed, (a, m) in zip((3, 1, 2), ((40, 60), (50, 100), (60, 80)))}
    rows = every_row(start)
    rows["rft"] = {2: metrics(61), 1: metrics(58), 3: metrics(45)}  # paired by seed, not by order
    lines = {line[:28].strip(): line[28:].split() for line in report.table(rows, [3, 1, 2], 4).splitlines()}
    assert lines["start policy (SFT)"] == "50.0 ± 10.0 2.0 0.0 ± 0.0 90.0 ± 0.0 40.0 50.0 60.0".split()
    # BCPG scored as the start did, so RFT's paired difference from it is its gain
    assert lines["RFT"] == "54.7 ± 8.5 2.0 4.7 ± 3.5 90.0 ± 0.0 4.7 ± 3.5 45.0 58.0 61.0".split()
    assert lines["consensus of the two (AND)"][10:16] == "40.0 ± 10.0 0.0 ± 0.0".split()  # mined %, vs itself


def test_the_pre_registered_comparisons_and_the_rounds():
    """BCPG-NSA beats BCPG by 1, 2, 3 points on seeds 0, 1, 2 (see the golden test above: +2.00,
    interval [-0.48, +4.48], p 0.074); every other cell scores as the start, so BCPG-NSA - RFT
    is the same, and consensus - each judge too. Holm over the five secondary p of 0.074:
    5 * 0.074 = 0.371, then the running maximum keeps it. Rounds 1 and 2 of nsa iterate: BCPG-NSA
    gains 2, 4, 6 in round 2 where BCPG gains 0: +4.00 [-0.97, +8.97], p 0.074. The rounds
    started from the start policy itself (round0), so round 0 is 0 points from it on every seed."""
    start = {seed: metrics(50.0) for seed in (0, 1, 2)}
    rows = every_row(start) | {"round0": dict(start)}
    rows["nsa-0.5"] = {seed: metrics(50.0 + seed + 1) for seed in (0, 1, 2)}
    for k in (1, 2):
        rows |= {f"iter{k}/{cell}": dict(start) for _, cell in report.ITERATED}
        rows[f"iter{k}/nsa-0.5"] = {seed: metrics(50.0 + k * (seed + 1)) for seed in (0, 1, 2)}
    text = report.table(rows, [0, 1, 2], 4)
    primary = next(line for line in text.splitlines() if line.startswith("BCPG-NSA - BCPG (primary)"))
    assert primary.split()[-7:] == ["3", "+2.00", "[", "-0.48,", "+4.48]", "0.074", "-"]
    judge = next(line for line in text.splitlines() if line.startswith("consensus - PRM-like alone"))
    assert judge.split()[-2:] == ["0.074", "0.371"]
    lines = text.splitlines()
    second = lines[next(i for i, line in enumerate(lines) if line.startswith("round")) + 2]  # round 1, round 2
    assert second.split()[:3] == ["2", "0.0", "±"] and "+4.00 [ -0.97,  +8.97]  0.074" in second
    assert lines[-1] == "round 0 - the sweep's start policy:   0.0 ±  0.0 (0 of 3 seeds apart; from +0.00 to +0.00)"


def test_round_gains_are_over_the_policy_the_rounds_started_from(tmp_path):
    """The sweep's start policy scored 50 on seeds 0, 1, 2; the rounds' own start (round0,
    pretrained again on another machine) scored 48, 50, 47, and each method's round 1 scored one
    point above it. The gain is +1.0 ± 0.0 over round 0 (over the sweep's start it would read
    -1, +1, -2: -0.7). Round 0 - start: -2, 0, -3, mean -1.67, sample std
    sqrt((0.33^2 + 1.67^2 + 1.33^2) / 2) = sqrt(2.33) = 1.53: "-1.7 ± 1.5", 2 of 3 seeds apart.
    Without round0 for every seed the rounds are not tabulated: their gains would be over a
    policy they did not start from."""
    rows = every_row({seed: metrics(50.0) for seed in (0, 1, 2)})
    rows["round0"] = {0: metrics(48.0), 1: metrics(50.0), 2: metrics(47.0)}
    rows |= {
        f"iter1/{cell}": {s: metrics(m["eval/toy/avg_at_4"] + 1) for s, m in rows["round0"].items()}
        for _, cell in report.ITERATED
    }
    lines = report.table(rows, [0, 1, 2], 4).splitlines()
    first = lines[next(i for i, line in enumerate(lines) if line.startswith("round")) + 1]
    assert first.split()[:10] == ["1", "1.0", "±", "0.0", "1.0", "±", "0.0", "1.0", "±", "0.0"]
    assert lines[-1] == "round 0 - the sweep's start policy:  -1.7 ±  1.5 (2 of 3 seeds apart; from -3.00 to +0.00)"
    report.figure({"short": (rows, [0, 1, 2])}, 4, tmp_path / "r.png")
    del rows["round0"][2]
    assert report.rounds(rows, [0, 1, 2]) == [] and report.seeds_with_rounds(rows) == [0, 1]


def test_rounds_saved_for_some_seeds_only_are_not_tabulated(tmp_path):
    """A run still going has saved its rounds for seeds 0 and 1 of the 3 asked: every round
    difference is paired by seed, so no round is tabulated (nor drawn), and the table says which
    seeds have them, instead of failing on seed 2. The rest of the tables is as without rounds."""
    rows = every_row({seed: metrics(50.0) for seed in (0, 1, 2)})
    without = report.table(rows, [0, 1, 2], 4)
    rows |= {f"iter{k}/{cell}": {0: metrics(51.0), 1: metrics(52.0)} for k in (1, 2) for _, cell in report.ITERATED}
    rows["round0"] = {0: metrics(50.0), 1: metrics(50.0)}
    text = report.table(rows, [0, 1, 2], 4)
    assert text.startswith(without) and text.endswith("only seeds [0, 1] have them all; not tabulated")
    assert report.rounds(rows, [0, 1]) == [1, 2] and report.rounds(rows, [0, 1, 2]) == []
    report.figure({"short": (rows, [0, 1, 2])}, 4, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_p_value_under_half_a_thousandth_is_shown_as_under_0_001():
    """3 decimals round 0.0004 to 0.000, which reads as impossible, so it is "<0.001"; 0.0005
    and above keep 3 decimals (0.0005 -> 0.001, 0.0123 -> 0.012)."""
    assert [report.shown_p(p) for p in (0.0004, 0.0005, 0.0123)] == ["<0.001", "0.001", "0.012"]
    line = report.comparison_line("BCPG-NSA - BCPG (primary)", stats.Paired(20, 0.36, 0.16, 0.00001), 0.0002)
    assert line.split()[-2:] == ["<0.001", "<0.001"]  # the table's p and Holm p columns use it too


def test_the_picture_is_drawn_from_the_results(tmp_path):
    rows = every_row({seed: metrics(50.0 + seed) for seed in (0, 1)})
    rows |= {f"iter1/{cell}": rows[cell] for _, cell in report.ITERATED} | {"round0": rows["start"]}
    report.figure(
        {"short": (rows, [0, 1]), "long": (every_row({0: metrics(1.0), 1: metrics(2.0)}), [0, 1])},
        4,
        tmp_path / "r.png",
    )
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_killed_pretraining_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    """5 steps, a state saved every 2: a run killed in its 4th step goes on from the state
    after step 2 and ends with the weights of an unkilled run, bit for bit (the model, AdamW's
    moments and the data stream are all restored). A state saved with other arguments (here
    another lr) is not used: that run starts at step 0."""
    pretrain = load("pretrain")
    monkeypatch.setattr(pretrain, "SAVE_EVERY", 2)
    exclude = frozenset()
    pretrain.pretrain(0, tmp_path / "whole", exclude, steps=5, batch_size=4)
    real_batch, calls = pretrain.batch, []

    def killed_in_step_4(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_batch(*args)

    monkeypatch.setattr(pretrain, "batch", killed_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain(0, tmp_path / "killed", exclude, steps=5, batch_size=4)
    assert not (tmp_path / "killed").exists() and (tmp_path / "killed.tmp" / "pretrain_state.pt").exists()
    monkeypatch.setattr(pretrain, "batch", real_batch)
    capsys.readouterr()
    pretrain.pretrain(0, tmp_path / "killed", exclude, steps=5, batch_size=4)
    assert "resumed at step 2" in capsys.readouterr().err
    whole, resumed = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "killed"))
    assert whole.keys() == resumed.keys() and all(whole[key].equal(resumed[key]) for key in whole)
    assert not (tmp_path / "killed" / "pretrain_state.pt").exists()  # the finished folder is only the model

    monkeypatch.setattr(pretrain, "batch", killed_in_step_4)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain(0, tmp_path / "other", exclude, steps=5, batch_size=4)
    monkeypatch.setattr(pretrain, "batch", real_batch)
    capsys.readouterr()
    pretrain.pretrain(0, tmp_path / "other", exclude, steps=5, batch_size=4, lr=1e-3)
    assert "resumed" not in capsys.readouterr().err


@pytest.fixture
def toy_seed(tmp_path, monkeypatch):
    """Seed 0's short-chain problems and a 3-step pretrained policy, in a temporary working
    directory, with benchmarks/toy_nsa importable (the recipe names its oracle judge as
    chain_judge.ChainJudge)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TOY))
    run = load("run")
    args = run.parse(["--train", "8", "--heldout", "8", "--pretrain_steps", "3", "--seeds", "0"])
    run.check_sizes("short", args)
    run.prepare("short", 0, args)
    return run


def test_the_sweep_has_every_method_and_judge_on_the_seed_s_model(toy_seed, capsys):
    args = toy_seed.parse(["--seeds", "0", "--heldout", "512", "--samples", "16"])  # the powered run's evaluation
    overrides = toy_seed.seed_overrides("short", 0, args)
    main(["sweep", "--config", str(TOY / "sweep.yaml"), "--name", "toy-short-512x16-seed0", *overrides, "--dry_run"])
    lines = capsys.readouterr().out.strip().splitlines()
    cells = [line.split(":")[0] for line in lines]
    judges = ["judge-oracle", "judge-prm", "judge-llm", "judge-arithmetic"]
    assert cells == [cell for _, cell in report.METHODS] + judges
    assert {cell for _, cell in report.JUDGES} <= set(cells)
    for cell, line in zip(cells, lines):
        assert f"--model.export_dir=runs/toy_nsa/toy-short-512x16-seed0/{cell}/policy" in line
        assert "--model.policy=runs/toy_nsa/short/seed0/sft" in line and "--data.sampler.init_args.seed=0" in line
        assert "--evaluate.sampler.init_args.num_samples=16" in line and "runs/toy_nsa/short/heldout-512.jsonl" in line
    assert "--data.consensus.init_args.judges=[NoisyJudge1]" in lines[cells.index("judge-prm")]
    assert Path("runs/toy_nsa/short/seed0/sft/model.safetensors").is_file()
    rft = next(cell for cell in toy_seed.cells("short", 0, args) if cell.name == "rft")
    iterated = "--model.export_dir=runs/toy_nsa/short/iterate-512x16-seed0/rft"
    assert toy_seed.iterate_args("short", 0, args, rft)[-1] == iterated


def test_other_sizes_and_a_missing_experiment_are_one_line_errors(toy_seed):
    """toy_seed wrote runs/toy_nsa/short/settings.json with --train 8: a run with --train 16
    would find those results and mix them in, so it is refused (another evaluation size is
    not: it names its own runs); no experiment yet means no table, said so."""
    toy_seed.check_sizes("short", toy_seed.parse(["--train", "8", "--heldout", "64", "--pretrain_steps", "3"]))
    other = toy_seed.parse(["--train", "16", "--heldout", "8", "--pretrain_steps", "3"])
    refused = (
        r"runs/toy_nsa/short holds an experiment of train 8 \(now 16\); save the tables .*move all of runs/toy_nsa"
    )
    with pytest.raises(toy_seed.ToyError, match=refused):
        toy_seed.check_sizes("short", other)
    with pytest.raises(toy_seed.ToyError, match=r"no toy experiment in sqlite:///runs/toy_nsa/mlflow.db"):
        toy_seed.results("short", other)


def test_a_start_policy_of_another_kind_of_chain_is_refused(toy_seed):
    """settings.json records the chains' format and the policy's width beside the sizes: a
    folder pretrained before the long setting was labelled (or with another width) would
    otherwise be reused against the new questions without a word. An old record, without
    them, is refused the same way."""
    args = toy_seed.parse(["--train", "8", "--heldout", "8", "--pretrain_steps", "3"])
    path = Path("runs/toy_nsa/short/settings.json")
    made = json.loads(path.read_text())
    assert made["setting.hidden"] == 64 and made["setting.labelled"] is False and made["train"] == 8
    path.write_text(json.dumps(made | {"setting.hidden": 32}))
    with pytest.raises(toy_seed.ToyError, match=r"of setting.hidden 32 \(now 64\); save the tables"):
        toy_seed.check_sizes("short", args)
    path.write_text(json.dumps({"train": 8, "pretrain_steps": 3}))  # the record before the kinds were kept
    with pytest.raises(toy_seed.ToyError, match=r"of setting.name None \(now short\), setting.min_ops None"):
        toy_seed.check_sizes("short", args)


def test_a_start_policy_that_has_not_learnt_its_chains_stops_the_run(toy_seed):
    """toy_seed's policy had 3 SFT steps: its loss on fresh chains is near that of a uniform
    guess over its 31 tokens (ln 31 = 3.4), far above LEARNT, so the run stops before any
    method trains from it, and says how to pretrain longer."""
    args = toy_seed.parse(["--train", "8", "--heldout", "8", "--pretrain_steps", "3"])
    loss = toy_seed.sft_loss(Path("runs/toy_nsa/short/seed0/sft"), 0, toy_seed.SETTINGS["short"], chains=16)
    assert 2.0 < loss < 4.0
    with pytest.raises(
        toy_seed.ToyError, match=r"seed0/sft has not learnt its chains \(loss .* above 0.3\).*--pretrain_steps 6"
    ):
        toy_seed.check_learnt("short", 0, args)


def test_the_registered_run_has_only_the_cells_the_comparisons_read(toy_seed, tmp_path):
    """``--registered`` runs 7 of the 10 cells, the same cells (same fingerprints) as the whole
    sweep, so either run reuses the other's; its tables and picture leave the other rows out."""
    every = toy_seed.cells("short", 0, toy_seed.parse(["--seeds", "0"]))
    registered = toy_seed.cells("short", 0, toy_seed.parse(["--seeds", "0", "--registered"]))
    compared = {cell for _, a, b in report.COMPARISONS for cell in (a, b)}
    assert len(every) == 10 and {cell.name for cell in registered} == compared and len(registered) == 7
    assert all(cell in every for cell in registered)  # name, arguments and fingerprint alike
    assert {cell for _, cell in report.ITERATED} <= compared  # --registered --iterations finds them
    rows = every_row({0: metrics(50.0), 1: metrics(52.0)})
    rows = {cell: by_seed for cell, by_seed in rows.items() if cell in compared | {"start"}}
    rows["nsa-0"] = {0: metrics(51.0)}  # seed 0 ran every cell; merged with seed 1's registered run
    text = report.table(rows, [0, 1], 4)
    assert "BCPG (beta=1)" in text and "GRPO-offline" not in text and "beta=0 " not in text
    report.figure({"short": (rows, [0, 1])}, 4, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_results_saved_by_runs_elsewhere_are_joined_by_seed(tmp_path):
    """Seeds 0 and 1 ran in two places, each saving results.json: the tables read both; a seed
    that neither holds, or another evaluation size, is a one-line error."""
    run = load("run")
    for seed in (0, 1):
        rows = {row: {str(seed): m[seed]} for row, m in every_row({seed: metrics(40.0 + seed)}).items()}
        (tmp_path / f"r{seed}.json").write_text(json.dumps({"short": {"256x4": rows}}))
    args = run.parse(["--seeds", "0", "1", "--merge", str(tmp_path / "r0.json"), str(tmp_path / "r1.json")])
    joined = run.saved(args.merge, "short", args)
    assert joined["bcpg"] == {0: metrics(40.0), 1: metrics(41.0)}
    with pytest.raises(run.ToyError, match=r"short 256x4: no seed \[2\] in .*r0.json"):
        run.saved(args.merge, "short", run.parse(["--seeds", "0", "2"]))
    with pytest.raises(run.ToyError, match=r"short 512x16: no seed \[0, 1\]"):
        run.saved(args.merge, "short", run.parse(["--seeds", "0", "1", "--heldout", "512", "--samples", "16"]))


def test_saved_results_are_not_run_again_and_the_rest_is_read_from_mlflow(toy_seed, tmp_path):
    """A session's runs/toy_nsa is gone with its machine; powered.json keeps the seeds' start
    policy and cells. With ``--saved`` and ``--iterations 2``, seed 0 (start and the 7
    registered cells saved) has only its rounds to run, seed 1 (nothing saved) everything, and
    without rounds seed 0 has nothing left: it is not even pretrained. The table joins the saved
    rows with the rounds found in MLflow (a real sqlite store, the runs logged as nsa iterate's
    evaluation logs them: the policy's path and nsa.done) and with round0, this machine's
    evaluation of the start policy the rounds started from (49), not the saved start (50)."""
    registered = [cell.name for cell in toy_seed.cells("short", 0, toy_seed.parse(["--registered"]))]
    held = {row: {"0": metrics(50.0 + i)} for i, row in enumerate(["start", *registered])}
    path = tmp_path / "powered.json"
    path.write_text(json.dumps({"short": {"8x4": held}}))
    given = ["--train", "8", "--heldout", "8", "--pretrain_steps", "3", "--registered", "--saved", str(path)]
    args = toy_seed.parse([*given, "--seeds", "0", "--iterations", "2"])
    have = toy_seed.joined(args.saved, "short", args)
    assert toy_seed.to_run("short", 0, args, have) == ["rounds"]
    assert toy_seed.to_run("short", 1, args, have) == ["start", "sweep", "rounds"]
    partial = {row: by_seed for row, by_seed in have.items() if row != "judge-prm"}
    assert toy_seed.to_run("short", 0, args, partial) == ["sweep", "rounds"]

    from mlflow import MlflowClient

    client = MlflowClient(toy_seed.TRACKING)
    experiment = client.create_experiment("nsa-toy")
    for k in (1, 2):
        for _, cell in report.ITERATED:
            run = client.create_run(experiment)
            policy = toy_seed.iterate_folder("short", 0, args, cell) / f"iter{k}"
            client.log_param(run.info.run_id, "eval/policy", str(policy))
            client.set_tag(run.info.run_id, "nsa.done", "true")
            client.log_metric(run.info.run_id, "eval/toy/avg_at_4", 60.0 + k)
    again = client.create_run(experiment, tags={"nsa.command": "evaluate"})
    client.log_param(again.info.run_id, "eval/policy", "runs/toy_nsa/short/seed0/sft")
    client.log_metric(again.info.run_id, "eval/toy/problems", 8.0)
    client.log_metric(again.info.run_id, "eval/toy/avg_at_4", 49.0)
    client.set_terminated(again.info.run_id)
    rows = toy_seed.results("short", args)
    assert rows["start"] == {0: metrics(50.0)} and rows["bcpg"] == {0: held["bcpg"]["0"]}
    assert rows["round0"][0]["eval/toy/avg_at_4"] == 49.0
    assert rows["iter2/nsa-0.5"] == {0: {"eval/toy/avg_at_4": 62.0}} and len(rows) == 1 + 7 + 1 + 6

    whole = toy_seed.parse([*given, "--seeds", "0", "5"])
    both = {row: {**by_seed, "5": by_seed["0"]} for row, by_seed in held.items()}  # seed 5 saved as seed 0
    path.write_text(json.dumps({"short": {"8x4": both}}))
    toy_seed.run_all(toy_seed.parse([*given, "--seeds", "5"]))
    assert not Path("runs/toy_nsa/short/seed5").exists()  # saved whole: neither pretrained nor run
    assert toy_seed.results("short", whole)["rft"] == {0: held["rft"]["0"], 5: held["rft"]["0"]}


def test_saved_and_merged_results_are_one_line_errors(toy_seed, capsys):
    """--merge runs nothing and --saved runs the rest: both at once is refused by the parser;
    a results file that is not there is named."""
    with pytest.raises(SystemExit):
        toy_seed.parse(["--merge", "a.json", "--saved", "b.json"])
    assert "not allowed with argument --merge" in capsys.readouterr().err
    with pytest.raises(toy_seed.ToyError, match=r"^nowhere.json: no such results file"):
        toy_seed.joined([Path("nowhere.json")], "short", toy_seed.parse([]))
