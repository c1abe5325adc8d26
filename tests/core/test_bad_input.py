"""Bad input gets one line on stderr, exit code 2, no traceback, and finished work is kept."""

from __future__ import annotations

import json

import pytest

from nsa.cli import main
from tests.recipe import tiny_recipe


def fails_with(capsys, args: list[str], *needles: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nsa: error:")]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def recipe(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return str(tiny_recipe(tmp_path, tiny_model))


def test_unknown_plugin_suggests_the_close_name(recipe, capsys):
    fails_with(capsys, ["fit", "--config", recipe, "--model.loss.class_path", "BCPGG"], "did you mean 'BCPG'")


def test_wrong_init_args_name_the_key(recipe, capsys):
    fails_with(capsys, ["fit", "--config", recipe, "--model.loss.init_args.betta=0.5"], "betta")


def test_beta_out_of_range(recipe, capsys):
    fails_with(capsys, ["fit", "--config", recipe, "--model.loss.init_args.beta=2"], "beta", "[-1, 1]")


def test_missing_question_field_names_field_and_file(recipe, capsys):
    fails_with(capsys, ["fit", "--config", recipe, "--data.question_field=prompt"], "'prompt'", "three_problems")


def test_missing_model_path(recipe, capsys):
    fails_with(capsys, ["fit", "--config", recipe, "--model.policy=./no/such/model"], "./no/such/model")


def test_missing_recipe(capsys):
    fails_with(capsys, ["fit", "--config", "nope.yaml"], "nope.yaml")


def test_empty_reference_answer(tmp_path, recipe, capsys):
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"question": "What is 1 + 1?", "answer": " "}) + "\n")
    fails_with(capsys, ["fit", "--config", recipe, f"--data.problems={problems}"], "empty answer", "row 0")


def test_no_group_with_both_outcomes(recipe, capsys):
    """Both answers are right for 'sum' and wrong for the others: every group is dropped."""
    args = ["fit", "--config", recipe, '--data.sampler.init_args.answers=["\\\\boxed{5}", "\\\\boxed{5}"]']
    fails_with(capsys, args, "1 all right", "2 all wrong")


def test_segmenter_that_does_not_tile_keeps_finished_stages(tmp_path, recipe, capsys):
    bad = "--data.segmenter.class_path=tests.bad_plugins.OverlapSegmenter"
    fails_with(capsys, ["fit", "--config", recipe, bad], "OverlapSegmenter", "tile")
    finished = {}
    for stage in ("sample", "verify", "groups"):
        (done,) = (tmp_path / "cache" / stage).iterdir()
        finished[stage] = (done / "stats.json").stat().st_mtime_ns
    main(["prepare", "--config", recipe])  # the paragraph segmenter reuses the finished stages
    for stage, mtime in finished.items():
        (done,) = (tmp_path / "cache" / stage).iterdir()
        assert (done / "stats.json").stat().st_mtime_ns == mtime
    assert (tmp_path / "cache" / "behaviour").exists()


def test_empty_answers_are_counted(recipe, capsys):
    main(["prepare", "--config", recipe, '--data.sampler.init_args.answers=["", "\\\\boxed{5}"]'])
    assert "3 empty answers" in capsys.readouterr().err  # one per problem


def test_unsupported_precision(recipe, capsys):
    fails_with(capsys, ["fit", "--config", recipe, "--trainer.precision=16"], "16-mixed", "bf16-mixed")


def test_relative_model_path_without_dot(recipe, capsys):
    fails_with(capsys, ["fit", "--config", recipe, "--model.policy=runs/x/policy"], "runs/x/policy", "does not exist")


def test_answers_longer_than_max_length_are_dropped_and_counted(recipe, capsys):
    """The tiny rows are 73 to 88 tokens: a limit of 80 drops some, a limit of 10 all of them."""
    from nsa.commands import NSACLI

    cli = NSACLI(["--config", recipe, "--data.max_length=80"], run=False)
    cli.datamodule.setup("fit")
    dropped = cli.datamodule.stats["dropped_too_long"]
    assert 0 < dropped < 8 and len(cli.datamodule.train_rows) == 8 - dropped
    assert "longer than 80 tokens (data.max_length)" in capsys.readouterr().err
    # GRPO's group std, like the group mean, counts the dropped answers: each kept group has one right
    # answer of 4 (rewards 1 0 0 0: sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5, mean 0.25)
    rows = cli.datamodule.train_rows
    assert set(rows["reward_std"]) == {0.5} and set(rows["reward_mean"]) == {0.25}
    fails_with(capsys, ["fit", "--config", recipe, "--data.max_length=10"], "no training rows left")


def test_a_loss_that_turns_nan_stops_with_the_step_and_questions(recipe, capsys):
    """A learning rate of 1e30 makes the weights overflow after the first step; the next
    loss is NaN and the run stops naming the optimizer step and the batch's question ids."""
    line = fails_with(capsys, ["fit", "--config", recipe, "--model.optimizer.init_args.lr=1e30"], "at step 1")
    assert "loss is nan" in line and "questions" in line and "learning rate" in line


def test_a_sampler_that_breaks_its_count_is_named(tmp_path, tiny_model, capsys):
    """A sampler must return num_samples answers for every prompt; zip would drop the rest silently."""
    bad = "--data.sampler.class_path=tests.bad_plugins.ShortSampler"
    with pytest.raises(SystemExit):
        main(["prepare", "--config", str(tiny_recipe(tmp_path, tiny_model)), bad])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "ShortSampler returned 1 groups of [1] answers for 1 prompts" in err
    assert "num_samples=2" in err


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("--data.responses_per_step=0", ["data.responses_per_step is 0", "at least 1"]),
        ("--data.shard_size=0", ["data.shard_size is 0"]),
        ("--data.max_problems=-1", ["data.max_problems is -1"]),
        ("--data.tokens_per_micro_batch=0", ["data.tokens_per_micro_batch is 0"]),
        ("--data.prompt_template=Solve it.", ["data.prompt_template has no {question}"]),
        ("--data.prompt_template={questoin} please", ["data.prompt_template has {questoin}", "only field"]),
        ("--data.prompt_template={question} in {", ["data.prompt_template is not a valid template"]),
        ("--model.loss.init_args.tau=-1", ["tau must be >= 0"]),
        ("--model.logprob_chunk_tokens=0", ["model.logprob_chunk_tokens is 0", ">= 1"]),
        ("--model.logprob_chunk_tokens=-2", ["model.logprob_chunk_tokens is -2", ">= 1"]),
        ("--model.logprob_chunk_tokens=100000", ["larger than data.tokens_per_micro_batch", "at most"]),
        ("--model.attn_implementation=flash_attn", ["model.attn_implementation 'flash_attn' is not one", "sdpa"]),
        ("--model.attn_implementation=flash_attention_2", ["needs the flash-attn package"]),
        ("--data.sampler.init_args.answers=[only one]", ["num_samples is 1", "at least 2"]),
        ("--model.optimizer.init_args.lr=-1", ["model.optimizer: Invalid learning rate: -1.0"]),
        ("--model.optimizer.init_args.lr=0", ["model.optimizer: lr is 0.0", "> 0"]),
        ("--trainer.logger.init_args.tracking_uri=garbage://x", ["tracking_uri 'garbage://x' is refused by MLflow"]),
    ],
)
def test_a_bad_value_is_refused_before_any_stage(recipe, capsys, tmp_path, override, needles):
    """Before any work: no stage folder is created."""
    fails_with(capsys, ["fit", "--config", recipe, override], *needles)
    assert not (tmp_path / "cache").exists()


ARITHMETIC = "nsa.plugins.judges.arithmetic.ArithmeticJudge"


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        (
            {
                "judges": [
                    {"class_path": "nsa.plugins.judges.arithmetic.ArithmeticJudge", "init_args": {"threshold": 2}}
                ]
            },
            ["data.judges[0] (ArithmeticJudge) threshold is 2", "[0, 1]"],
        ),
        (
            {"consensus": {"class_path": "nsa.plugins.consensus.vote.Vote", "init_args": {"judges": ["PRMJudge"]}}},
            ["data.consensus names PRMJudge", "not among data.judges (ArithmeticJudge)"],
        ),
    ],
)
def test_a_bad_judging_setup_is_refused_before_any_stage(tmp_path, tiny_model, monkeypatch, capsys, data, needles):
    monkeypatch.chdir(tmp_path)
    fails_with(capsys, ["fit", "--config", str(tiny_recipe(tmp_path, tiny_model, **data))], *needles)
    assert not (tmp_path / "cache").exists()


@pytest.mark.multiprocess
def test_ctrl_c_says_what_was_kept_in_one_line(tmp_path, tiny_model):
    """A real SIGINT to `nsa prepare` while it samples (2 s per problem, 3 problems, 1 per shard). That a rerun
    resumes from the kept shards is test_cache.py's killed-stage test."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    from tests.recipe import REPO

    slow = {"class_path": "tests.scripted.SlowScriptedSampler", "init_args": {"delay_s": 2.0}}
    recipe = tiny_recipe(tmp_path, tiny_model, sampler=slow)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [shutil.which("nsa"), "prepare", "--config", str(recipe)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job ignores SIGINT, and a child inherits that: Python then raises no
        # KeyboardInterrupt at all; Ctrl-C at a terminal reaches a process with the default action
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while not list((tmp_path / "cache").glob("sample/*/shard-00000")) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "nsa: interrupted: committed stage shards and saved checkpoints are kept" in stderr.splitlines()[-1]
    kept = sorted(path.name for path in (tmp_path / "cache").glob("sample/*/shard-*"))
    assert kept and "shard-00000" in kept


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (b"", ["problems.jsonl is empty"]),
        (b'{"question": "\xff", "answer": "1"}\n', ["is not UTF-8 (byte 0xff at offset 14)", "save it as UTF-8"]),
        (b'{"question": "1+1", "answer": "2"}\nhello\n', ["problems.jsonl line 2 is not JSON", "one JSON object"]),
    ],
)
def test_a_broken_problem_file_is_named_with_where_it_breaks(tmp_path, recipe, capsys, content, needles):
    problems = tmp_path / "problems.jsonl"
    problems.write_bytes(content)
    fails_with(capsys, ["prepare", "--config", recipe, f"--data.problems={problems}"], *needles)


def test_a_yaml_syntax_error_gives_its_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  problems: x\n   shard_size: [1\n")
    fails_with(capsys, ["fit", "--config", str(broken)], "broken.yaml is not valid YAML (line 3, column 14)")


def test_an_unknown_plugin_that_is_no_near_miss_says_how_to_find_or_install_one(recipe, capsys):
    fails_with(
        capsys,
        ["fit", "--config", recipe, "--model.loss.class_path", "NoSuchLoss"],
        "unknown plugin 'NoSuchLoss' for --model.loss",
        "installed nsa.losses: BCPG, DPO, GRPOOffline, RFT, TOPR;",
        "`nsa plugins`",
        "install the package",
    )


def test_a_near_miss_lists_only_plugins_of_its_kind(recipe, capsys):
    line = fails_with(
        capsys,
        ["fit", "--config", recipe, "--data.judges=[ArithmeticJudge,PRMJudgee]"],
        "unknown plugin 'PRMJudgee' for --data.judges: did you mean 'PRMJudge'",
        "installed nsa.judges: ArithmeticJudge, LLMJudge, NoisyJudge, PRMJudge;",
    )
    assert "BCPG" not in line and "MATH500" not in line


BAD = "tests.bad_plugins."


@pytest.mark.parametrize(
    ("slot", "plugin", "needles"),
    [
        ("--model.loss", "SequenceSegmenter", ["PolicyLoss contract", "has no method __call__()"]),
        ("--data.judges", "SequenceSegmenter", ["StepJudge contract", "has no method score()"]),
        ("--data.segmenter", "SequenceSegmenter", ["returns Sequence[tuple[int, int]]", "expects list[tuple"]),
        ("--data.judges", "ListJudge", ["parameter items is list[StepItem], which does not take Sequence[StepItem]"]),
        (
            "--model.loss",
            "NoSuch",
            ["cannot import tests.bad_plugins.NoSuch", "tests.bad_plugins has no NoSuch; check the class_path"],
        ),
        ("--data.segmenter", "Nope", ["unknown plugin 'Nope'", "installed nsa.segmenters: ParagraphSegmenter"]),
    ],
)
def test_help_of_a_broken_plugin_fails_alike_in_every_slot(recipe, capsys, slot, plugin, needles):
    """jsonargparse alone printed an empty help, exit 0, for a segmenter with the wrong return type."""
    name = plugin if plugin == "Nope" else BAD + plugin
    fails_with(capsys, ["fit", "--config", recipe, f"{slot}.help", name], f"{slot}.help: ", *needles)


def test_a_plugin_mismatch_names_the_method_and_types(recipe, capsys):
    fails_with(
        capsys,
        ["fit", "--config", recipe, f"--data.judges=[{BAD}ListJudge]", "--print_config"],
        "data.judges: ListJudge does not meet the StepJudge contract (nsa.contracts): ListJudge.score: parameter items",
    )


def test_a_plugin_a_type_checker_accepts_is_accepted(recipe, capsys):
    """IterableJudge.score takes Iterable[StepItem], wider than the contract's Sequence[StepItem]."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", recipe, f"--data.judges=[{BAD}IterableJudge]", "--print_config"])
    assert exit_info.value.code in (0, None)
    assert f"class_path: {BAD}IterableJudge" in capsys.readouterr().out


HF_SAMPLER = "nsa.plugins.samplers.hf_generate.HFSampler"
LONG_QUESTION = " ".join(["What is 12 + 7?"] * 60)  # 885 prompt tokens; the three problems' are 57 each


def with_a_long_question(tmp_path) -> str:
    from tests.recipe import DATA

    problems = tmp_path / "problems.jsonl"
    long = json.dumps({"id": "long", "question": LONG_QUESTION, "answer": "19"})
    problems.write_text(DATA.read_text().strip() + "\n" + long + "\n")
    return str(problems)


def hf_recipe(tmp_path, tiny_model, **data) -> str:
    """The tiny recipe with the real HF sampler: the tiny Llama's context is 512 tokens."""
    sampler = {"class_path": HF_SAMPLER, "init_args": {"num_samples": 2, "max_new_tokens": 8}}
    return str(tiny_recipe(tmp_path, tiny_model, sampler=sampler, problems=with_a_long_question(tmp_path), **data))


def test_a_question_longer_than_the_samplers_context_is_dropped_and_counted(tmp_path, tiny_model, monkeypatch, capsys):
    """Before: the 885-token prompt went to generate (past the 512 positions); now it is dropped
    before sampling, counted as prompts_too_long, and a rerun reuses the sample stage."""
    from tests.recipe import stage_rows

    monkeypatch.chdir(tmp_path)
    recipe = hf_recipe(tmp_path, tiny_model)
    main(["generate", "--config", recipe])
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("nsa: warning:")]
    assert line == (
        "nsa: warning: problems: dropped 1 of 4 questions (prompts_too_long) whose prompt is longer than 504 "
        "tokens (the context 512 minus data.sampler max_new_tokens 8); lower data.sampler max_new_tokens or "
        "shorten the questions"
    )
    assert "prompts_too_long 1" in err
    (stage,) = (tmp_path / "cache" / "sample").iterdir()
    groups = sorted(row["group"] for row in stage_rows(tmp_path / "cache", "sample"))
    assert groups == ["hard", "hard", "six", "six", "sum", "sum"]  # two answers to each short question
    main(["generate", "--config", recipe])  # the same drop: the same key, nothing sampled again
    assert [p.name for p in (tmp_path / "cache" / "sample").iterdir()] == [stage.name]
    assert "prompts_too_long 1" in capsys.readouterr().err


def test_when_no_question_fits_the_sampler_it_says_which_option(tmp_path, tiny_model, monkeypatch, capsys):
    """max_new_tokens 500 leaves 12 of the 512 positions for a prompt: none of the four fits."""
    monkeypatch.chdir(tmp_path)
    args = ["generate", "--config", hf_recipe(tmp_path, tiny_model), "--data.sampler.init_args.max_new_tokens=500"]
    fails_with(
        capsys,
        args,
        "all 4 questions of problems have a prompt longer than 12 tokens (the context 512 minus data.sampler "
        "max_new_tokens 500); lower data.sampler max_new_tokens or shorten the questions",
    )
    assert not (tmp_path / "cache" / "sample").exists()


def test_an_evaluation_drops_a_question_longer_than_its_samplers_context(tmp_path, tiny_model, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(tiny_recipe(tmp_path, tiny_model).read_text())
    bench = {"source": with_a_long_question(tmp_path), "name": "four", "workers": 1}
    sampler = {"class_path": HF_SAMPLER, "init_args": {"num_samples": 2, "max_new_tokens": 8}}
    config["evaluate"] = {"benchmarks": [{"class_path": "ProblemFile", "init_args": bench}], "sampler": sampler}
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump(config))
    main(["evaluate", "--config", str(tmp_path / "evaluate.yaml")])
    out, err = capsys.readouterr()
    (line,) = [line for line in err.splitlines() if line.startswith("nsa: warning:")]
    assert line.startswith("nsa: warning: eval-four: dropped 1 of 4 questions (prompts_too_long)")
    assert "evaluate.sampler max_new_tokens 8" in line
    assert out.splitlines()[1].split()[:3] == ["four", "3", "1"]  # the table: 3 problems scored, 1 dropped
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert (run.data.metrics["eval/four/problems"], run.data.metrics["eval/four/dropped"]) == (3.0, 1.0)


def test_a_micro_batch_budget_below_the_longest_row_is_said_before_training(recipe, capsys):
    """The tiny rows are 73 to 88 tokens, 6 of them over 80: batching gives each its own micro-batch
    (test_prompt_room.py), so training goes on after one warning line; a budget of 88 gets none."""
    main(["fit", "--config", recipe, "--data.tokens_per_micro_batch=80", "--trainer.max_steps=1"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nsa: warning:")]
    assert line == (
        "nsa: warning: data.tokens_per_micro_batch is 80, below the longest row of 88 tokens (prompt + answer): "
        "6 of 8 rows get a micro-batch of their own, over the budget; raise it to at least 88"
    )
    main(["fit", "--config", recipe, "--data.tokens_per_micro_batch=88", "--trainer.max_steps=1"])
    assert "nsa: warning: data.tokens_per_micro_batch" not in capsys.readouterr().err
