"""Cached, resumable stages: each maps one dataset to the next.

A stage's output lives in ``<cache_dir>/<stage>/<fingerprint>/``, where the fingerprint
hashes the input's fingerprint and the stage's resolved config. Work is written in shards,
each committed atomically (written to a temporary folder, then renamed), so a killed run
loses at most the shard in flight. ``stats.json`` is written last and marks the stage done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from nsa.errors import NSAError


def describe(obj: Any) -> Any:
    """A JSON-able identity of a config value or plugin: class path plus public attributes."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [describe(item) for item in obj]
    if isinstance(obj, dict):
        return {str(key): describe(val) for key, val in obj.items()}
    if hasattr(obj, "__dict__"):
        public = {k: describe(v) for k, v in vars(obj).items() if not k.startswith("_")}
        return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", **public}
    return repr(obj)


# Bump when a stage's code changes what it writes, so old cache entries are not reused.
CACHE_VERSION = 2  # 2: CRLF paragraphs, linear token offsets


def fingerprint(*parts: Any) -> str:
    blob = json.dumps([CACHE_VERSION, *(describe(p) for p in parts)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StageOutput:
    name: str
    dataset: Dataset
    fingerprint: str
    path: Path
    stats: dict[str, float]


def run_stage(
    cache_dir: str | Path,
    name: str,
    source: StageOutput,
    config: Any,
    fn: Callable[[Dataset], Dataset],
    shard_size: int,
    summarise: Callable[[Dataset], dict[str, float]] | None = None,
    cached_only: bool = False,
) -> StageOutput:
    """Run ``fn`` over ``source.dataset`` shard by shard, reusing committed shards.

    Shards are matched by index, so the shard size is part of the fingerprint. ``cached_only``:
    a finished stage must be in the cache already (a training process that did not run the stages).
    """
    fp = fingerprint(source.fingerprint, name, config, shard_size)
    out = Path(cache_dir) / name / fp
    if (out / "stats.json").exists():
        return StageOutput(name, _load_shards(out), fp, out, json.loads((out / "stats.json").read_text()))
    if cached_only:
        raise NSAError(
            f"stage {name} is not in {out} on this process, though the process that ran the data stages "
            "finished them; if the nodes do not share data.cache_dir, set data.shared_cache_dir: false"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(describe(config), indent=2, default=str))
    _compute_shards(out, name, source.dataset, fn, shard_size)
    dataset = _load_shards(out)
    stats = summarise(dataset) if summarise else {}
    _write_atomic(out / "stats.json", json.dumps(stats, indent=2))
    return StageOutput(name, dataset, fp, out, stats)


def _compute_shards(out: Path, name: str, data: Dataset, fn: Callable, shard_size: int) -> None:
    starts = list(range(0, len(data), shard_size)) or [0]
    done = sum((out / f"shard-{i:05d}").exists() for i in range(len(starts)))
    if done:
        print(f"nsa: stage {name}: reusing {done} of {len(starts)} finished shards", file=sys.stderr)
    for i, start in enumerate(tqdm(starts, desc=f"stage {name}", unit="shard", leave=False)):
        final = out / f"shard-{i:05d}"
        if final.exists():
            continue
        result = fn(data.select(range(start, min(start + shard_size, len(data)))))
        tmp = out / f".tmp-{i:05d}-{uuid.uuid4().hex}"  # unique across nodes sharing the cache
        shutil.rmtree(tmp, ignore_errors=True)
        result.save_to_disk(str(tmp))
        _commit(tmp, final)


def _commit(tmp: Path, final: Path) -> None:
    """Renames a finished shard into place. Another process on a shared cache may have
    committed the same shard first (stages are deterministic): keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _load_shards(out: Path) -> Dataset:
    shards = sorted(out.glob("shard-*"), key=lambda p: int(p.name.removeprefix("shard-")))
    parts = [load_from_disk(str(p)) for p in shards]
    non_empty = [p for p in parts if len(p)] or parts[:1]
    return concatenate_datasets(non_empty) if len(non_empty) > 1 else non_empty[0]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)
