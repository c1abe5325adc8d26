"""Cached, resumable stages: each maps one dataset to the next.

A stage's output lives in ``<cache_dir>/<stage>/<fingerprint>/``, where the fingerprint
hashes the input's fingerprint and the stage's resolved config. Work is written in shards,
each committed atomically (written to a temporary folder, then renamed), so a killed run
loses at most the shard in flight. ``stats.json`` is written last and marks the stage done.
Each shard carries a manifest (``MANIFEST``: rows, and each file's size and sha256), checked
before a stage is reused (``_check``): a damaged or missing shard is recomputed, and the
fingerprint the next stage sees changes (``repairs``), so the stages after it are recomputed.

The processes of a job share a stage's shards (:mod:`nsa.team`): each takes the next
unfinished shard, commits it, and reads everyone's when all are done, so the output is the
same rows in the same order on any number of processes. Two jobs on one cache may compute
the same shard; the first rename wins and the other copy is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from nsa.errors import NSAError
from nsa.models import free_accelerator_memory
from nsa.team import Team, muted, say, takes_part

VISIBLE_S = 30.0  # how long a shard committed on another node may take to show here


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
    team: Team | None = None,
    span: int = 1,
) -> StageOutput:
    """Run ``fn`` over ``source.dataset`` shard by shard, reusing committed shards.

    Shards are matched by index, so the shard size is part of the fingerprint. With a
    ``team``, its processes share the shards (see :mod:`nsa.team`) and each returns the
    whole output; ``span``: a worker spans that many of a node's devices (a tensor-parallel
    engine), so only the processes that lead one take shards.
    """
    team = team or Team.alone()
    fp = fingerprint(source.fingerprint, name, config, shard_size)
    out = Path(cache_dir) / name / fp
    starts = list(range(0, len(source.dataset), shard_size)) or [0]  # shard i: rows starts[i]...
    if span > 1:  # an engine will span the GPUs of processes that just held a model: free them first
        free_accelerator_memory()
    with writing(out, name):
        verdict = _check(out, len(starts), name) if team.leads else ""
    if team.agree(f"{name}/{fp}", verdict) == "finished":
        stats = json.loads((out / "stats.json").read_text())
        return StageOutput(name, _load_shards(out, len(starts), name, team), _repaired(fp, out), out, stats)
    with writing(out, name):
        out.mkdir(parents=True, exist_ok=True)
        if team.leads:
            _write_atomic(out / "config.json", json.dumps(describe(config), indent=2, default=str))
    _compute_shards(out, name, source.dataset, fn, starts, shard_size, team, span)
    dataset = _load_shards(out, len(starts), name, team)
    with muted(team):  # every process summarises (the same numbers); the leader's notices print
        stats = summarise(dataset) if summarise else {}
    if team.leads:
        with writing(out, name):
            _write_atomic(out / "stats.json", json.dumps(stats, indent=2))
    return StageOutput(name, dataset, _repaired(fp, out), out, stats)


def _compute_shards(
    out: Path, name: str, data: Dataset, fn: Callable, starts: list[int], shard_size: int, team: Team, span: int
) -> None:
    done = sum((out / f"shard-{i:05d}").exists() for i in range(len(starts))) if team.leads else 0
    if done:
        say(team, f"nsa: stage {name}: reusing {done} of {len(starts)} finished shards")

    def compute(i: int) -> bool:
        final = out / f"shard-{i:05d}"
        if final.exists():
            return False
        result = fn(data.select(range(starts[i], min(starts[i] + shard_size, len(data)))))
        tmp = out / f".tmp-{i:05d}-{uuid.uuid4().hex}"  # unique across processes and nodes
        with writing(out, name, tmp):
            result.save_to_disk(str(tmp))
            _seal(tmp, len(result))
            _commit(tmp, final)
        return True

    with tqdm(total=len(starts), desc=f"stage {name}", unit="shard", leave=False, disable=not team.leads) as bar:
        counts = team.share(f"{name}/{out.name}", len(starts), compute, takes_part(team, span), bar)
    if team.size > 1:
        by = ", ".join(str(c) for c in counts)
        say(team, f"nsa: stage {name}: {sum(counts)} shards computed by {team.size} processes ({by})")


@contextlib.contextmanager
def writing(out: Path, name: str = "", scratch: Path | None = None) -> Iterator[None]:
    """A write the cache refuses (read-only, full, a file where a folder should be) is one line
    naming data.cache_dir; the half-written ``scratch`` goes, the committed shards stay."""
    try:
        yield
    except OSError as err:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        where = f"stage {name} in {out}" if name else str(out)
        raise NSAError(
            f"data.cache_dir: cannot write {where} ({err.strerror or err}); {write_fix(err)} (committed shards are "
            "kept: a rerun resumes from them)"
        ) from None


def write_fix(err: OSError) -> str:
    """The fix for the cause: a full disk, a folder this user may not write, a file in a folder's place."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space there or set --data.cache_dir to a folder on another disk"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make it writable for this user or set --data.cache_dir to a folder you may write"
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return "move that file away or set --data.cache_dir to a folder"
    return "set --data.cache_dir to a writable folder"


def check_writable(cache_dir: str | Path) -> None:
    """Before any stage runs: the cache folder, or the nearest folder above it that exists (where
    it will be made), is a folder that takes a file. Nothing is left behind: a probe file goes."""
    root = Path(cache_dir).absolute()
    existing = next(p for p in (root, *root.parents) if p.exists())
    with writing(root):
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file, not a folder")
        probe, name = tempfile.mkstemp(prefix=".nsa-writable-", dir=existing)
        os.close(probe)
        os.unlink(name)


def _commit(tmp: Path, final: Path) -> None:
    """Renames a finished shard into place. Another process on a shared cache may have
    committed the same shard first (stages are deterministic): keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _check(out: Path, n: int, name: str) -> str:
    """The leader's verdict on a stage's folder: "finished" when its stats and every shard are whole, else
    "compute", after deleting each damaged shard (said in one line) and, if any was finished, the stats."""
    stats = out / "stats.json"
    try:
        finished = isinstance(json.loads(stats.read_text()), dict)
    except FileNotFoundError:
        finished = False
    except (OSError, ValueError):
        print(f"nsa: stage {name}: {stats} is unreadable; summarising the stage again", file=sys.stderr)
        finished = False
        stats.unlink()
    damaged = {i: why for i in range(n) if (why := _damage(out / f"shard-{i:05d}", finished))}
    for i, why in damaged.items():
        print(f"nsa: stage {name}: shard-{i:05d} {why}; computing it again", file=sys.stderr)
        shutil.rmtree(out / f"shard-{i:05d}", ignore_errors=True)
    if damaged and finished:  # its rows may come back different: the stages after it must not be reused
        stats.unlink()
        _write_atomic(out / "repairs", str(int(_read(out / "repairs") or 0) + 1))
    return "finished" if finished and not damaged else "compute"


def _repaired(fp: str, out: Path) -> str:
    """The stage's fingerprint as the next stage sees it: changed by every repair, so that it is recomputed."""
    repairs = _read(out / "repairs")
    return fingerprint(fp, "repairs", repairs) if repairs else fp


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


MANIFEST = "nsa-shard.json"  # in each shard: its row count, and each file's size and sha256
_SEEN: set[Path] = set()  # shards whose checksums this process has verified (once is enough)


def _seal(folder: Path, rows: int) -> None:
    """Write the shard's manifest into it, before it is committed (the rename commits both)."""
    files = {path.name: [path.stat().st_size, _sha256(path)] for path in sorted(folder.iterdir())}
    (folder / MANIFEST).write_text(json.dumps({"rows": rows, "files": files}))


def _damage(folder: Path, finished: bool) -> str:
    """Why a shard cannot be used ("" when it can): missing from a finished stage, a file missing, of another
    size or (the first time this process looks) another checksum, or fewer rows than it committed."""
    if not folder.is_dir():
        return "is missing" if finished else ""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files, rows = manifest["files"], manifest["rows"]
    except FileNotFoundError:
        return ""  # committed before shards had manifests: trusted, as before
    except (OSError, ValueError, KeyError, TypeError):
        return "has an unreadable manifest"
    deep = folder not in _SEEN
    for file, (size, digest) in files.items():
        path = folder / file
        if not path.is_file() or path.stat().st_size != size:
            return f"is damaged ({file} is missing or has another size)"
        if deep and _sha256(path) != digest:
            return f"is damaged ({file} does not match its checksum)"
    try:
        loaded = len(load_from_disk(str(folder)))
    except Exception as error:  # noqa: BLE001 (whatever Arrow says, the shard is unusable)
        return f"does not load ({type(error).__name__})"
    _SEEN.add(folder)
    return "" if loaded == rows else f"has {loaded} rows of the {rows} it committed"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _load_shards(out: Path, n: int, name: str, team: Team) -> Dataset:
    """Shards 0..n-1 of a finished stage, in order. Another node of the job may have written
    one a moment ago: a shared filesystem gets a grace period to show it."""
    shards = [out / f"shard-{i:05d}" for i in range(n)]
    deadline = time.monotonic() + (VISIBLE_S if team.job_size > 1 else 0.0)
    while (missing := [p for p in shards if not p.exists()]) and time.monotonic() < deadline:
        time.sleep(1.0)
    if missing and team.job_size > 1:
        raise NSAError(
            f"stage {name}: {missing[0]} is missing, though the job finished it; if the nodes do not "
            "share data.cache_dir, set data.shared_cache_dir: false"
        )
    if missing:
        raise NSAError(f"stage {name}: {missing[0]} is missing from a finished stage; delete {out} to compute it again")
    parts = [load_from_disk(str(p)) for p in shards]
    non_empty = [p for p in parts if len(p)] or parts[:1]
    return concatenate_datasets(non_empty) if len(non_empty) > 1 else non_empty[0]


def check_shared(cache_dir: str | Path, team: Team) -> None:
    """Every process of the team sees ``cache_dir``: process 0 writes a file there that every
    other one must find, before any stage (else the first stage's end would say so, hours in)."""
    if team.size == 1:
        return
    probe = Path(cache_dir) / f".probe-{team.agree('probe', uuid.uuid4().hex)}"
    if team.leads:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
    team.barrier("probe-written")
    deadline = time.monotonic() + VISIBLE_S
    while not probe.exists() and time.monotonic() < deadline:
        time.sleep(1.0)
    if not probe.exists():
        raise NSAError(
            f"data.cache_dir {cache_dir} is not shared: process {team.job_rank} cannot see a file process 0 "
            "wrote there; put it on a filesystem every node sees, or set data.shared_cache_dir: false"
        )
    team.barrier("probe-read")
    if team.leads:
        probe.unlink()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)
