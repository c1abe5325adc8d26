"""Stages are cached by fingerprint and resume after a kill, reusing committed shards."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from datasets import Dataset

from nsa.stages import cache
from nsa.stages.cache import StageOutput, describe, fingerprint, run_stage

SLOW_STAGE = textwrap.dedent(
    """
    import sys, time
    from datasets import Dataset
    from nsa.stages.cache import StageOutput, run_stage

    def slow_double(rows):
        time.sleep(0.4)
        return rows.map(lambda r: {"y": r["x"] * 2})

    source = StageOutput("numbers", Dataset.from_dict({"x": list(range(10))}), "fp-numbers", None, {})
    run_stage(sys.argv[1], "double", source, {"factor": 2}, slow_double, shard_size=1)
    """
)


def source() -> StageOutput:
    return StageOutput("numbers", Dataset.from_dict({"x": list(range(10))}), "fp-numbers", Path("."), {})


def counting_double(calls: list[int]):
    def fn(rows: Dataset) -> Dataset:
        calls.append(len(rows))
        return rows.map(lambda r: {"y": r["x"] * 2})

    return fn


@pytest.mark.multiprocess
def test_killed_stage_resumes_from_committed_shards(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_STAGE, str(tmp_path)], env=env, start_new_session=True)
    stage_dir = tmp_path / "double"
    deadline = time.time() + 60
    while not list(stage_dir.glob("*/shard-00002")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (out,) = stage_dir.iterdir()
    committed = len(list(out.glob("shard-*")))
    assert 3 <= committed < 10 and not (out / "stats.json").exists()

    calls: list[int] = []
    result = run_stage(tmp_path, "double", source(), {"factor": 2}, counting_double(calls), shard_size=1)
    assert len(calls) == 10 - committed  # only the unfinished shards ran
    assert result.dataset["y"] == [2 * x for x in range(10)]

    again = run_stage(tmp_path, "double", source(), {"factor": 2}, counting_double(calls), shard_size=1)
    assert len(calls) == 10 - committed and again.fingerprint == result.fingerprint


def test_fingerprint_follows_config_and_input(tmp_path):
    calls: list[int] = []
    run_stage(tmp_path, "double", source(), {"factor": 2}, counting_double(calls), shard_size=5)
    run_stage(tmp_path, "double", source(), {"factor": 3}, counting_double(calls), shard_size=5)
    assert len(calls) == 4 and len(list((tmp_path / "double").iterdir())) == 2
    assert fingerprint("a", {"k": 1}) != fingerprint("b", {"k": 1})


class Plugin:
    def __init__(self, k: int) -> None:
        self.k = k
        self._model = object()  # run-time state: not part of the identity


def test_describe_uses_public_attributes_only():
    assert describe(Plugin(3)) == {"class": f"{__name__}.Plugin", "k": 3}
    assert fingerprint(Plugin(3)) == fingerprint(Plugin(3)) != fingerprint(Plugin(4))


def test_resume_with_another_shard_size_recomputes(tmp_path):
    """Shards are matched by index: a new shard size must not reuse rows of the old one."""
    calls: list[int] = []

    def dies_after_three(rows: Dataset) -> Dataset:
        if len(calls) == 3:
            raise RuntimeError("killed")
        calls.append(len(rows))
        return rows.map(lambda r: {"y": r["x"] * 2})

    try:
        run_stage(tmp_path, "double", source(), {"factor": 2}, dies_after_three, shard_size=1)
    except RuntimeError:
        pass
    result = run_stage(tmp_path, "double", source(), {"factor": 2}, counting_double(calls), shard_size=5)
    assert result.dataset["y"] == [2 * x for x in range(10)]


def test_a_shard_committed_meanwhile_by_another_process_is_kept(tmp_path):
    """Two nodes on a shared cache may compute the same shard. The stage function here commits
    shard 0 itself (standing in for the other process) before returning; the rename then
    finds the shard in place, keeps it, and the stage still completes with every row."""
    from nsa.stages import cache

    def rival_first(rows: Dataset) -> Dataset:
        out = rows.map(lambda r: {"y": r["x"] * 2})
        (final,) = [p for p in (tmp_path / "double").iterdir() if p.is_dir()]
        shard = final / "shard-00000"
        if not shard.exists():
            out.save_to_disk(str(shard))
        return out

    result = cache.run_stage(tmp_path, "double", source(), {"factor": 2}, rival_first, shard_size=5)
    assert result.dataset["y"] == [2 * x for x in range(10)]
    assert not list(result.path.glob(".tmp-*"))


def _finished(tmp_path: Path) -> tuple[StageOutput, list[int]]:
    calls: list[int] = []
    summary = lambda rows: {"rows": float(len(rows))}  # noqa: E731
    result = run_stage(tmp_path, "double", source(), {"factor": 2}, counting_double(calls), 3, summary)
    return result, calls


def _rerun(tmp_path: Path) -> tuple[StageOutput, list[int]]:
    cache._SEEN.clear()  # as a new process: checksums are verified again
    return _finished(tmp_path)


def _arrow(out: Path, shard: int) -> Path:
    (arrow,) = (out / f"shard-{shard:05d}").glob("*.arrow")
    return arrow


def damage_delete(out: Path) -> None:
    shutil.rmtree(out / "shard-00001")


def damage_truncate(out: Path) -> None:
    arrow = _arrow(out, 2)
    arrow.write_bytes(arrow.read_bytes()[:-40])


def damage_same_size(out: Path) -> None:
    arrow = _arrow(out, 0)
    data = bytearray(arrow.read_bytes())
    data[-60] ^= 0xFF  # same size, another byte: only the checksum tells
    arrow.write_bytes(bytes(data))


def damage_manifest(out: Path) -> None:
    (out / "shard-00000" / cache.MANIFEST).write_text('{"rows": 3, "fi')


@pytest.mark.parametrize(
    ("damage", "notice"),
    [
        (damage_delete, "shard-00001 is missing; computing it again"),
        (damage_manifest, "shard-00000 has an unreadable manifest; computing it again"),
        (damage_truncate, "shard-00002 is damaged (data-00000-of-00001.arrow is missing or has another size)"),
        (damage_same_size, "shard-00000 is damaged (data-00000-of-00001.arrow does not match its checksum)"),
    ],
)
def test_a_damaged_shard_of_a_finished_stage_is_computed_again(tmp_path, capsys, damage, notice):
    """10 rows in shards of 3: 4 shards. One damaged shard is recomputed (3 rows, or 1 for the last), the
    output equals the undamaged run's, and the fingerprint the next stage sees changes (it must recompute)."""
    first, calls = _finished(tmp_path)
    assert calls == [3, 3, 3, 1] and first.stats == {"rows": 10.0}
    rows = first.dataset.to_list()  # before the damage: the dataset reads its files lazily
    damage(first.path)
    again, calls = _rerun(tmp_path)
    assert f"nsa: stage double: {notice}" in capsys.readouterr().err
    assert calls == [1 if "00003" in notice else 3]
    assert again.dataset.to_list() == rows and again.stats == first.stats
    assert again.fingerprint != first.fingerprint
    third, calls = _rerun(tmp_path)  # whole again: nothing recomputed, the same (repaired) fingerprint
    assert calls == [] and third.fingerprint == again.fingerprint


def test_an_unreadable_stats_file_is_summarised_again_and_no_shard_recomputed(tmp_path, capsys):
    first, _ = _finished(tmp_path)
    (first.path / "stats.json").write_text('{"rows": 1')
    again, calls = _rerun(tmp_path)
    assert "stats.json is unreadable; summarising the stage again" in capsys.readouterr().err
    assert calls == [] and again.stats == {"rows": 10.0} and again.fingerprint == first.fingerprint


FILL = textwrap.dedent(
    """
    import sys
    from datasets import Dataset
    from nsa.errors import NSAError
    from nsa.stages.cache import StageOutput, check_writable, run_stage

    root = sys.argv[1]
    check_writable(root)
    rows = Dataset.from_dict({"x": list(range(40))})
    source = StageOutput("numbers", rows, "fp-numbers", None, {})
    try:
        run_stage(root, "wide", source, {}, lambda r: r.map(lambda _: {"text": "y" * 20000}), shard_size=1)
    except NSAError as err:
        print(err)
    """
)


def in_own_mounts(script: str, *args: str) -> subprocess.CompletedProcess:
    """Runs ``sh -c script`` in a private mount namespace: the test's tmpfs and read-only mounts
    vanish with it (root only, as CI runs, like the sandbox's uid-65534 battery)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.multiprocess
def test_a_full_cache_is_one_line_and_keeps_the_committed_shards(tmp_path):
    """A 256 KiB tmpfs: each 20 kB shard takes about 5 pages (arrow, two JSON files, the
    manifest), so some shards commit and then the disk is full: ENOSPC is one line naming
    data.cache_dir, and the shard in flight leaves no scratch folder behind."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    mount = f'mount -t tmpfs -o size=256k tmpfs "{cache_dir}"'
    done = in_own_mounts(f'{mount} && "{sys.executable}" -c "$1" "{cache_dir}" && ls -a "{cache_dir}"/wide/*', FILL)
    assert done.returncode == 0, done.stderr[-2000:]
    message, *listing = done.stdout.strip().splitlines()
    assert message.startswith("data.cache_dir: cannot write stage wide in "), message
    assert "(No space left on device); free space there or set --data.cache_dir to a folder on another disk" in message
    assert "a rerun resumes" in message
    shards = [name for name in listing if name.startswith("shard-")]
    assert 1 <= len(shards) < 40 and not [name for name in listing if name.startswith(".tmp")], listing


@pytest.mark.multiprocess
def test_a_read_only_cache_is_refused_before_any_stage(tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    read_only = f'mount --bind "{cache_dir}" "{cache_dir}" && mount -o remount,bind,ro "{cache_dir}"'
    done = in_own_mounts(f'{read_only} && "{sys.executable}" -c "$1" "{cache_dir}"', FILL)
    assert done.returncode == 1 and done.stdout.strip() == "", done.stderr[-2000:]  # check_writable raised
    assert f"nsa.errors.NSAError: data.cache_dir: cannot write {cache_dir} (Read-only file system)" in done.stderr
    assert "make it writable for this user or set --data.cache_dir" in done.stderr and "free space" not in done.stderr


def test_a_cache_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    for path in (tmp_path / "cache", tmp_path / "cache" / "sub"):
        why = f"{tmp_path / 'cache'} is a file, not a folder"
        with pytest.raises(cache.NSAError, match=rf"data.cache_dir: cannot write {path} \({why}") as refused:
            cache.check_writable(path)
        assert "move that file away or set --data.cache_dir to a folder" in str(refused.value)
        assert "free space" not in str(refused.value)
