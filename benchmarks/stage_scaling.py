"""Wall time of the sample, behaviour and judge stages on 1 and on 2 processes: same work, one run.

Each setting runs in fresh spawned processes (one thread each, a gloo process group of 1 or
2, nsa's own ``run_stage`` and stage functions, a fresh cache), so the only difference is
how many processes share the shards. The work is compute-bound and
long-tailed, like long-CoT answers:

- sample: a random Llama (``--hidden``, ``--layers``) generates exactly L tokens per answer,
  L drawn per problem from a log-normal (median ``--median``, sigma ``--sigma``, at most
  ``--max-tokens``), through a sampler that meets nsa's Sampler contract;
- behaviour: pi_ref's forward over those answers (``pipeline._behaviour_fn``, nsa's code);
- judge: PRMJudge (hf, token-classification) on a random Llama of the same size, each answer
  cut in steps of 48 characters.

A forward costs far less than generating the same tokens, so the behaviour and judge stages
run over ``--copies`` copies of the sampled answers (same length mix), long enough to time.

Reported per stage: wall seconds on 1 and 2 processes and the speed-up; the idle fraction of
the less busy process (1 - its seconds inside the stage function / the stage's wall time:
the stage's fixed costs, reading every shard back at the end, count as idle); the imbalance
(1 - the less busy process's busy seconds / the busier one's); and, from the one-process
shard times, the imbalance a static split (shard i to process i mod 2) would have had, for
comparison with the shared queue nsa uses.

    OMP_NUM_THREADS=1 python benchmarks/stage_scaling.py            # about 4 minutes on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/stage_scaling.py --json stage_scaling.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.tiny builds the random models, tests.teamwork finds a port
STAGES = ("sample", "behaviour", "judge")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=2, help="problems per shard")
    parser.add_argument("--num-samples", type=int, default=2)
    parser.add_argument("--median", type=int, default=48, help="median answer length in tokens")
    parser.add_argument("--sigma", type=float, default=0.8, help="log-normal spread of answer lengths")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--copies", type=int, default=8, help="behaviour and judge run on this many copies of the answers"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    return parser.parse_args()


class LengthSampler:
    """Exactly L new tokens per answer, L written in the question as ``len=L``: real generation
    whose cost per problem follows the length mix. Meets nsa's Sampler contract."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self._loaded = None

    def sample(self, model_dir: str, prompt_ids: Sequence[Sequence[int]]):
        import torch

        from nsa.contracts import Completion
        from nsa.models import load_policy, load_tokenizer

        if self._loaded is None:
            self._loaded = (load_policy(model_dir).eval(), load_tokenizer(model_dir))
        model, tokenizer = self._loaded
        out = []
        for ids in prompt_ids:
            length = int(re.search(r"len=(\d+)", tokenizer.decode(ids))[1])
            prompt = torch.tensor([list(ids)] * self.num_samples)  # (G, P)
            with torch.no_grad():
                drawn = model.generate(
                    input_ids=prompt,
                    do_sample=True,
                    max_new_tokens=length,
                    min_new_tokens=length,
                    top_k=0,
                    pad_token_id=tokenizer.pad_token_id,
                )[:, prompt.shape[1] :]
            out.append([Completion(row, [0.0] * len(row)) for row in drawn.tolist()])
        return out


class EveryNChars:
    """Steps of ``n`` characters (the last one shorter)."""

    def __init__(self, n: int = 48) -> None:
        self.n = n

    def split(self, text: str) -> list[tuple[int, int]]:
        return [(i, min(i + self.n, len(text))) for i in range(0, len(text), self.n)] or [(0, 0)]


def build_models(folder: Path, hidden: int, layers: int) -> tuple[str, str]:
    import torch
    from transformers import LlamaForCausalLM, LlamaForTokenClassification

    from tests.tiny import build_tokenizer, tiny_config

    paths = []
    for name, cls in (("policy", LlamaForCausalLM), ("prm", LlamaForTokenClassification)):
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        tokenizer = build_tokenizer(target)
        torch.manual_seed(0)
        config = tiny_config(
            tokenizer,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            num_key_value_heads=hidden // 64,
            max_position_embeddings=1024,
        )
        cls(config).save_pretrained(target)
        paths.append(str(target))
    return paths[0], paths[1]


def lengths(args: argparse.Namespace) -> list[int]:
    rng = random.Random(args.seed)
    draw = [round(args.median * math.exp(rng.gauss(0.0, args.sigma))) for _ in range(args.problems)]
    return [min(args.max_tokens, max(4, n)) for n in draw]


def timed(fn, busy: list[float], shard_times: list[float]):
    """``fn``, with the seconds of each call added up in ``busy`` and kept in ``shard_times``."""

    def wrapped(data):
        start = time.perf_counter()
        result = fn(data)
        shard_times.append(time.perf_counter() - start)
        busy[0] += shard_times[-1]
        return result

    return wrapped


def run_stages(team, setting: dict) -> dict:
    """The three stages on ``team``; per stage: wall and busy seconds, and each shard's time."""
    from datasets import Dataset, concatenate_datasets

    from nsa import pipeline
    from nsa.plugins.judges.prm import PRMJudge
    from nsa.stages import rollouts, steps
    from nsa.stages.cache import StageOutput, run_stage

    cache, policy, tokenizer = setting["cache"], setting["policy"], setting["tokenizer"]
    rows = setting["shard_size"] * setting["num_samples"]
    count = len(setting["questions"])
    table = {"id": [f"p{i}" for i in range(count)], "question": setting["questions"], "answer": ["0"] * count}
    source = StageOutput("problems", Dataset.from_dict(table), f"len-{setting['seed']}", Path("."), {})
    report: dict[str, dict] = {}

    def measure(name: str, data: StageOutput, fn, shard_size: int) -> StageOutput:
        busy, shard_times = [0.0], []
        start = time.perf_counter()
        out = run_stage(cache, name, data, {"benchmark": name}, timed(fn, busy, shard_times), shard_size, None, team)
        report[name] = {"wall": time.perf_counter() - start, "busy": busy[0], "shards": shard_times}
        return out

    sampler = LengthSampler(setting["num_samples"])
    sample = functools.partial(
        rollouts.sample_shard, sampler=sampler, model_dir=policy, tokenizer=tokenizer, template="{question}"
    )
    sampled = measure("sample", source, sample, setting["shard_size"])
    # every answer is a negative (judged); copied so that these quicker stages run long enough to time
    copies = concatenate_datasets([sampled.dataset] * setting["copies"])
    negatives = copies.add_column("reward", [0.0] * len(copies))
    negatives = StageOutput("verify", negatives, sampled.fingerprint, sampled.path, {})
    measure("behaviour", negatives, pipeline._behaviour_fn(policy, "32-true", tokenizer.pad_token_id, 4), rows)
    segment = functools.partial(steps.segment_shard, segmenter=EveryNChars())
    segmented = run_stage(cache, "segment", negatives, {}, segment, rows, None, team)
    judge = PRMJudge(model=setting["prm"], convention="token-classification", tokens_per_batch=2048)
    measure("judge", segmented, functools.partial(steps.judge_shard, judge=judge), rows)
    return report


def measured(team, folder: Path) -> None:
    """One process of a run (tests.teamwork starts it, in a gloo job of 1 or 2): the stages,
    and its figures in ``report-<rank>.json``."""
    import torch

    from nsa.models import load_tokenizer

    torch.set_num_threads(1)
    setting = json.loads((folder / "setting.json").read_text())
    setting["tokenizer"] = load_tokenizer(setting["policy"])
    (folder / f"report-{team.rank}.json").write_text(json.dumps(run_stages(team, setting)))


def run(size: int, setting: dict, folder: Path) -> list[dict]:
    from tests.teamwork import launch

    here = folder / f"{size}-processes"
    here.mkdir()
    (here / "setting.json").write_text(json.dumps({**setting, "cache": str(here / "cache")}))
    codes = launch(measured, size, here, timeout_s=3600)
    if any(codes):
        raise SystemExit(f"a {size}-process run failed: exit codes {codes}; see {here}/error-*.txt")
    return [json.loads((here / f"report-{rank}.json").read_text()) for rank in range(size)]


def static_imbalance(shard_times: list[float]) -> float:
    """1 - the less busy process's load / the busier one's, when shard i goes to process i mod 2."""
    loads = [sum(shard_times[0::2]), sum(shard_times[1::2])]
    return 1.0 - min(loads) / max(loads)


def summarise(one: list[dict], two: list[dict]) -> dict:
    figures = {}
    for stage in STAGES:
        wall_one = one[0][stage]["wall"]
        wall_two = max(r[stage]["wall"] for r in two)
        busy = [r[stage]["busy"] for r in two]
        less = min(range(2), key=lambda r: busy[r])
        figures[stage] = {
            "shards": len(one[0][stage]["shards"]),
            "wall_1": wall_one,
            "wall_2": wall_two,
            "speedup": wall_one / wall_two,
            "busy_2": busy,
            "idle_less_busy": 1.0 - busy[less] / two[less][stage]["wall"],
            "imbalance": 1.0 - min(busy) / max(busy),
            "imbalance_static_split": static_imbalance(one[0][stage]["shards"]),
            "shard_s_max_over_median": max(one[0][stage]["shards"])
            / sorted(one[0][stage]["shards"])[len(one[0][stage]["shards"]) // 2],
        }
    return figures


def main() -> None:
    args = parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nsa-stage-scaling-"))
    policy, prm = build_models(folder, args.hidden, args.layers)
    mix = lengths(args)
    questions = [f"Problem {i}: len={n}" for i, n in enumerate(mix)]
    setting = {
        "policy": policy,
        "prm": prm,
        "lengths": mix,
        "questions": questions,
        "seed": args.seed,
        "shard_size": args.shard_size,
        "num_samples": args.num_samples,
        "copies": args.copies,
    }
    print(
        f"answer lengths: median {sorted(mix)[len(mix) // 2]}, max {max(mix)}, total {sum(mix)} tokens x "
        f"{args.num_samples}; {args.problems} problems in shards of {args.shard_size}"
    )
    one = run(1, setting, folder)
    two = run(2, setting, folder)
    figures = summarise(one, two)
    head = ("stage", "shards", "1 proc s", "2 proc s", "speed-up", "idle", "imbalance", "static split")
    print(f"{head[0]:<10}" + "".join(f"{h:>13}" for h in head[1:]))
    for stage, f in figures.items():
        cells = [f"{f['shards']}", f"{f['wall_1']:.1f}", f"{f['wall_2']:.1f}", f"{f['speedup']:.2f}x"]
        cells += [f"{f['idle_less_busy']:.1%}", f"{f['imbalance']:.1%}", f"{f['imbalance_static_split']:.1%}"]
        print(f"{stage:<10}" + "".join(f"{c:>13}" for c in cells))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "lengths": mix, "stages": figures}, indent=2))


if __name__ == "__main__":
    main()
