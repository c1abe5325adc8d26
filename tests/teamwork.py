"""Teams of real processes for tests: spawned, joined by a gloo process group on 127.0.0.1.

Each member runs a target ``target(team, folder)`` and records what it did in ``folder``:
``calls-<rank>.txt`` (one line per shard it computed), ``out-<rank>.json`` (the stage's
rows as it returned them) and ``error-<rank>.txt`` (the error it stopped with).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from datasets import Dataset

ROWS = 12  # shards of one row each


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(target, size: int, folder: Path, timeout_s: float = 120.0) -> list[int | None]:
    """Runs ``target`` on ``size`` spawned processes of one job; their exit codes."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [context.Process(target=_member, args=(target, rank, size, port, str(folder))) for rank in range(size)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        proc.join(max(0.1, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    return [proc.exitcode for proc in procs]


def _member(target, rank: int, size: int, port: int, folder: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch.distributed as dist

    from nsa.team import of_job

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    team = of_job(rank, size, 0, rank, size, shared=True)
    try:
        with team.guard():
            target(team, Path(folder))
            team.leave()
    except Exception as err:
        (Path(folder) / f"error-{rank}.txt").write_text(str(err))
        os._exit(3)


def numbers():
    from nsa.stages.cache import StageOutput

    return StageOutput("numbers", Dataset.from_dict({"x": list(range(ROWS))}), "fp-numbers", Path("."), {})


def doubling(folder: Path, rank: int, delay_s: float, stop_at: int | None = None, how: str = "raise"):
    """A stage function that logs each call, takes ``delay_s``, and at this process's call
    ``stop_at`` raises or SIGKILLs itself."""
    calls: list[int] = []

    def fn(rows: Dataset) -> Dataset:
        calls.append(rows["x"][0])
        if stop_at is not None and len(calls) == stop_at:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError(f"boom at row {rows['x'][0]}")
        with (folder / f"calls-{rank}.txt").open("a") as log:
            log.write(f"{rows['x'][0]}\n")
        time.sleep(delay_s)
        return rows.map(lambda r: {"y": r["x"] * 2})

    return fn


def run_doubling(team, folder: Path, fn) -> None:
    from nsa.stages.cache import run_stage

    summarise = lambda data: team.total("calls", {"rows": float(len(data)), "mine": float(team.rank + 1)})  # noqa: E731
    out = run_stage(folder / "cache", "double", numbers(), {"factor": 2}, fn, 1, summarise, team)
    (folder / f"out-{team.rank}.json").write_text(json.dumps({"rows": list(out.dataset["y"]), "stats": out.stats}))


def share(team, folder: Path) -> None:
    run_doubling(team, folder, doubling(folder, team.rank, delay_s=0.1))


def raise_on_one(team, folder: Path) -> None:
    """Process 1 raises at its second shard; process 0's shards take a while."""
    delay, stop = (0.5, None) if team.rank == 0 else (0.05, 2)
    run_doubling(team, folder, doubling(folder, team.rank, delay, stop))


def raise_on_zero(team, folder: Path) -> None:
    """Process 0, which holds the store, raises at its second shard; process 1's take a while."""
    delay, stop = (0.05, 2) if team.rank == 0 else (0.5, None)
    run_doubling(team, folder, doubling(folder, team.rank, delay, stop))


def two_teams(team, folder: Path) -> None:
    """A second team on the same store, as a sweep's next cell builds: its keys are new, so its
    stage (factor 3) waits for, and sums, its own round only."""
    from nsa.team import of_job

    one_round(team, folder, 2)
    one_round(of_job(team.rank, team.size, 0, team.rank, team.size, shared=True), folder, 3)


def one_round(team, folder: Path, factor: int) -> None:
    from nsa.stages.cache import run_stage

    summarise = lambda data: team.total("round", {"factor": float(factor)})  # noqa: E731
    fn = doubling(folder, team.rank, delay_s=0.05)
    out = run_stage(folder / "cache", "double", numbers(), {"factor": factor}, fn, 1, summarise, team)
    (folder / f"stats-{factor}-{team.rank}.json").write_text(json.dumps(out.stats))


def unshared(team, folder: Path) -> None:
    """Each process names its own cache folder: the probe before any stage catches it."""
    from nsa.stages import cache

    cache.VISIBLE_S = 1.0
    cache.check_shared(folder / f"cache-{team.rank}", team)


def kill_one(team, folder: Path) -> None:
    """Process 1 SIGKILLs itself at its second shard; process 0 hears nothing from it for 3 s."""
    team.quiet_s = 3.0
    delay, stop = (0.2, None) if team.rank == 0 else (0.05, 2)
    run_doubling(team, folder, doubling(folder, team.rank, delay, stop, how="kill"))


def alone(folder: str, job: int) -> None:
    """One job of one process on a cache another job uses at the same time."""
    from nsa.stages.cache import run_stage

    fn = doubling(Path(folder), job, delay_s=0.05)
    out = run_stage(Path(folder) / "cache", "double", numbers(), {"factor": 2}, fn, 1)
    (Path(folder) / f"out-{job}.json").write_text(json.dumps({"rows": list(out.dataset["y"])}))
