"""Stage 0b: sample G answers per problem, score them, keep the informative groups."""

from __future__ import annotations

import hashlib
import statistics
import string
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, Features, List, Value

from nsa.contracts import PromptRoom, Sampler, Verifier, is_correct, is_negative
from nsa.errors import NSAError
from nsa.log import warn
from nsa.stages.cache import StageOutput, fingerprint

ROLLOUT_COLUMNS = ("group", "question", "answer", "prompt_ids", "response_ids", "response", "response_logprobs")
ROLLOUT_FEATURES = Features(
    {
        "group": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "prompt_ids": List(Value("int32")),
        "response_ids": List(Value("int32")),
        "response": Value("string"),
        "response_logprobs": List(Value("float32")),
    }
)


def check_template(template: str, option: str) -> None:
    """A prompt template has ``{question}`` and no other field (``{{`` and ``}}`` for literal braces)."""
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as error:
        raise NSAError(f"{option} is not a valid template ({error}); write literal braces as {{{{ and }}}}") from None
    if fields - {"question"}:
        raise NSAError(
            f"{option} has {', '.join('{' + f + '}' for f in sorted(fields - {'question'}))}: its only field is "
            "{question}; write literal braces as {{ and }}"
        )
    if "question" not in fields:
        raise NSAError(f"{option} has no {{question}}: every problem would get the same prompt")


def build_prompts(tokenizer, questions: list[str], template: str) -> list[list[int]]:
    """Prompt token ids: the question in ``template``, in the chat template when there is one."""
    texts = [template.format(question=q) for q in questions]
    if tokenizer.chat_template:
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
            for t in texts
        ]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [tokenizer(t)["input_ids"] for t in texts]


def drop_long_prompts(
    problems: StageOutput, tokenizer, template: str, room: PromptRoom | None, option: str
) -> tuple[StageOutput, int]:
    """The problems whose prompt fits ``room`` (``option``'s sampler), and how many did not (one
    warning line; an error when none fits). Dropping none keeps ``problems`` as it is, so the
    sampling stage's cache key changes only when its set of prompts does."""
    if room is None:  # the sampler sets no bound: every prompt is sampled
        return problems, 0
    prompts = build_prompts(tokenizer, problems.dataset["question"], template)
    keep = [i for i, ids in enumerate(prompts) if room.fits(len(ids))]
    if len(keep) == len(prompts):
        return problems, 0
    what, fix = _room_text(room, option)
    if not keep:
        raise NSAError(f"all {len(prompts)} questions of {problems.name} have a prompt {what}; {fix}")
    dropped = len(prompts) - len(keep)
    count = f"dropped {dropped} of {len(prompts)} questions (prompts_too_long)"
    warn(f"{problems.name}: {count} whose prompt is {what}; {fix}")
    kept = problems.dataset.select(keep)
    fp = fingerprint(problems.fingerprint, "prompts", keep)
    return StageOutput(problems.name, kept, fp, problems.path, {"problems": float(len(kept))}), dropped


def _room_text(room: PromptRoom, option: str) -> tuple[str, str]:
    """What a dropped prompt is longer than, and which options would make room, in the sampler's own names."""
    what = f"longer than {room.prompt_tokens} tokens (the context {room.context}"
    what += f" from {option} {room.context_option}" if room.context_option else ""
    what += f" minus {option} {room.answer_option} {room.answer})"
    fixes = [f"raise {option} {room.context_option}"] if room.context_option else []
    return what, ", ".join([*fixes, f"lower {option} {room.answer_option}"]) + " or shorten the questions"


def sample_shard(problems: Dataset, sampler: Sampler, model_dir: str, tokenizer, template: str) -> Dataset:
    """One row per sampled answer, with the generated ids and their sampling log-probs kept as they came."""
    prompts = build_prompts(tokenizer, problems["question"], template)
    completions = sampler.sample(model_dir, prompts)  # [problem][sample] -> Completion
    counts = {len(group) for group in completions}
    if len(completions) != len(prompts) or counts - {sampler.num_samples}:
        raise NSAError(
            f"{type(sampler).__name__} returned {len(completions)} groups of {sorted(counts)} answers for "
            f"{len(prompts)} prompts; a sampler returns num_samples={sampler.num_samples} answers per prompt"
        )
    rows: dict[str, list] = {k: [] for k in ROLLOUT_COLUMNS}
    for problem, prompt, group in zip(problems, prompts, completions, strict=True):
        for ids, logprobs in group:
            rows["group"].append(problem["id"])
            rows["question"].append(problem["question"])
            rows["answer"].append(problem["answer"])
            rows["prompt_ids"].append(list(prompt))
            rows["response_ids"].append(list(ids))
            rows["response"].append(tokenizer.decode(ids, skip_special_tokens=True))
            rows["response_logprobs"].append([float(x) for x in logprobs])
    return Dataset.from_dict(rows, features=ROLLOUT_FEATURES)


def verify_shard(rollouts: Dataset, verifier: Verifier, answers: dict[str, str] | None = None) -> Dataset:
    """Adds each answer's reward and status; ``answers`` gives the references by problem id when
    the rows do not carry them (an evaluation keeps large code tests out of its sample stage)."""
    references = rollouts["answer"] if answers is None else [answers[g] for g in rollouts["group"]]
    outcomes = verifier.verify(references, rollouts["response"])
    rollouts = rollouts.add_column("reward", [float(o.reward) for o in outcomes])
    return rollouts.add_column("verify_status", [o.status for o in outcomes])


def summarise_samples(rollouts: Dataset, eos_id: int) -> dict[str, float]:
    """Count answers cut off by the sampler's length limit (no EOS at the end)."""
    lengths = [len(ids) for ids in rollouts["response_ids"]]
    truncated = sum(not ids or ids[-1] != eos_id for ids in rollouts["response_ids"])
    if truncated:
        print(
            f"nsa: sample: {truncated} of {len(lengths)} answers hit the length limit before EOS; "
            "they are kept as they are (most then have no final answer and score 0)",
            file=sys.stderr,
        )
    return {"answers_truncated": float(truncated), "answer_tokens_mean": sum(lengths) / max(1, len(lengths))}


# Verifier statuses worth a line: the answer was never really checked, or the program was stopped.
NOTEWORTHY = {
    "empty": "empty answers",
    "no_answer": "with no final answer",
    "no_code": "with no code block",
    "timeout": "timed out",
    "memory": "out of memory",
    "output_limit": "over the output limit",
    "blocked": "stopped by the sandbox",
}


def summarise_verify(rollouts: Dataset) -> dict[str, float]:
    statuses = Counter(rollouts["verify_status"])
    noted = [f"{statuses[s]} {what}" for s, what in NOTEWORTHY.items() if statuses[s]]
    if noted:
        print(f"nsa: verify: {', '.join(noted)}; all scored 0", file=sys.stderr)
    rewards = rollouts["reward"]
    return {
        "answers": float(len(rollouts)),
        "answers_correct": float(sum(map(is_correct, rewards))),
        **{f"answers_{status}": float(n) for status, n in statuses.items()},
    }


def with_group_std(rows: Dataset) -> Dataset:
    """Adds each group's sample standard deviation of rewards (GRPO's advantage scale).

    Computed when training starts, not stored in a stage, so caches made before it stay valid.
    """
    by_group: dict[str, list[float]] = {}
    for group, reward in zip(rows["group"], rows["reward"]):
        by_group.setdefault(group, []).append(reward)
    std = {g: statistics.stdev(r) if len(r) > 1 else 0.0 for g, r in by_group.items()}
    return rows.add_column("reward_std", [std[g] for g in rows["group"]])


def drop_unusable(rows: Dataset, max_length: int | None) -> tuple[Dataset, dict[str, float]]:
    """Drops, and counts, the rows training cannot use: pi_ref log-probs that are NaN or inf (a
    broken behaviour forward) and prompt + answer longer than ``max_length`` tokens (the
    policy's context). Arrow compute keeps this cheap on hundreds of millions of tokens."""
    import pyarrow.compute as pc

    table = rows.with_format("arrow")[:]  # the selected rows, in order
    ref = table.column("ref_logprobs").combine_chunks()  # ListArray, one list per row
    bad = pc.invert(pc.is_finite(pc.list_flatten(ref)))
    nonfinite = set(pc.filter(pc.list_parent_indices(ref), bad).to_pylist())
    lengths = pc.add(
        pc.list_value_length(table.column("prompt_ids")), pc.list_value_length(table.column("response_ids"))
    )
    too_long = {i for i, n in enumerate(lengths.to_pylist()) if max_length is not None and n > max_length} - nonfinite
    keep = [i for i in range(len(rows)) if i not in nonfinite and i not in too_long]
    stats = {"dropped_nonfinite_ref": float(len(nonfinite)), "dropped_too_long": float(len(too_long))}
    return (rows if len(keep) == len(rows) else rows.select(keep)), stats


def row_lengths(rows: Dataset) -> list[int]:
    """Each row's prompt + answer tokens, by Arrow compute (no Python pass over the ids)."""
    import pyarrow.compute as pc

    table = rows.with_format("arrow")[:]  # the selected rows, in order
    prompt, answer = table.column("prompt_ids"), table.column("response_ids")
    return pc.add(pc.list_value_length(prompt), pc.list_value_length(answer)).to_pylist()


def not_per_token(rows: Dataset, column: str) -> int:
    """How many rows hold a list ``column`` of another length than their answer (0 for a column
    of numbers): a loss reading it per token cannot place it on the answer's tokens."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = rows.with_format("arrow")[:]  # the selected rows, in order
    values = table.column(column)
    if not pa.types.is_list(values.type) and not pa.types.is_large_list(values.type):
        return 0
    answer = pc.list_value_length(table.column("response_ids"))
    return pc.sum(pc.not_equal(pc.list_value_length(values), answer)).as_py() or 0


def filter_groups(rollouts: Dataset) -> Dataset:
    """Add the group mean reward and drop groups whose answers are all right or all wrong."""
    by_group: dict[str, list[float]] = {}
    for group, reward in zip(rollouts["group"], rollouts["reward"]):
        by_group.setdefault(group, []).append(reward)
    means = {g: statistics.fmean(r) for g, r in by_group.items()}
    rollouts = rollouts.add_column("reward_mean", [means[g] for g in rollouts["group"]])
    mixed = {g for g, r in by_group.items() if has_signal(r)}
    return rollouts.filter(lambda group: group in mixed, input_columns="group")


def has_signal(rewards: Sequence[float]) -> bool:
    """The rule for keeping a question: its answers' rewards differ, so their advantages are not all 0.

    With fractional rewards (a program passing half its tests scores 0.5, a negative by ``is_correct``) a
    group of 0.5 and 0 is kept: both are negatives, and the better one still has the higher advantage.
    A group whose rewards are all equal is dropped, counted as all correct or all wrong by ``is_correct``.
    """
    return min(rewards) != max(rewards)


def summarise_groups(before: Dataset, kept: Dataset) -> dict[str, float]:
    by_group: dict[str, list[float]] = {}
    for group, reward in zip(before["group"], before["reward"]):
        by_group.setdefault(group, []).append(reward)
    flat = [r for r in by_group.values() if not has_signal(r)]  # dropped: kept + these two = questions
    all_right = sum(is_correct(r[0]) for r in flat)
    all_wrong = len(flat) - all_right
    stats = {
        "questions": float(len(by_group)),
        "questions_kept": float(len(set(kept["group"]))),
        "questions_all_correct": float(all_right),
        "questions_all_wrong": float(all_wrong),
        "answers_kept": float(len(kept)),
        "negatives": float(sum(map(is_negative, kept["reward"]))),
    }
    if not len(kept):
        raise NSAError(
            f"no question has answers of different rewards among its samples ({all_right} all right, "
            f"{all_wrong} all wrong of {len(by_group)}); "
            "sample more answers, raise the temperature or use other problems"
        )
    return stats


def load_rollouts(path: str) -> StageOutput:
    """Rollouts from a file (``nsa generate --output`` writes one; any tool may), instead of sampling.

    A .jsonl, .json or .parquet file with the columns of ``ROLLOUT_FEATURES``, ids in the
    policy's tokenizer; ``response_logprobs`` may be absent (left empty). Other columns
    (``reward``) are dropped: answers are verified again, by the recipe's verifier. The
    fingerprint is the file's content hash, so an edited file invalidates later stages.
    """
    import datasets

    from nsa.stages.problems import FILE_BUILDERS

    file = Path(path)
    if file.suffix not in FILE_BUILDERS or not file.is_file():
        raise NSAError(f"data.rollouts: no .jsonl, .json or .parquet file at {path}")
    data = datasets.load_dataset(FILE_BUILDERS[file.suffix], data_files=str(file), split="train")
    if "response_logprobs" not in data.column_names:
        data = data.add_column("response_logprobs", [[] for _ in range(len(data))])
    missing = [c for c in ROLLOUT_COLUMNS if c not in data.column_names]
    if missing:
        raise NSAError(f"data.rollouts {path}: no field '{missing[0]}' (needs {', '.join(ROLLOUT_COLUMNS[:-1])})")
    data = data.select_columns(list(ROLLOUT_COLUMNS)).cast(ROLLOUT_FEATURES)
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return StageOutput("sample", data, digest.hexdigest()[:16], file, {"answers": float(len(data))})


def check_output(path: str) -> None:
    if Path(path).suffix not in (".jsonl", ".parquet"):
        raise NSAError(f"--output {path}: write a .jsonl or .parquet file")


def save_rollouts(data: Dataset, path: str) -> None:
    """Writes rollouts (with their rewards) to a .jsonl or .parquet file that ``data.rollouts`` reads."""
    check_output(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if path.endswith(".jsonl"):
        data.to_json(path, lines=True, force_ascii=False)
    else:
        data.to_parquet(path)
