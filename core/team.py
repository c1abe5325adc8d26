"""The processes that share a data stage's work, coordinated through the job's c10d store.

Every process of a job (started by Lightning's launcher, torchrun or SLURM) runs the same
stages in the same order. A stage hands its shards out one at a time from a counter in the
job's torch.distributed store (``store.add`` is atomic), so a process that draws short
answers simply takes more shards. Nobody waits in a collective: waiting processes poll the
store, so a stage may run for hours without a timeout. A process that fails writes its
error into the store; every other process reads it at its next poll and stops with it.

A team is the whole job when its nodes share ``data.cache_dir`` (``data.shared_cache_dir``),
else one node's processes: each node then computes every shard into its own cache. One
process alone is a team of one over an in-memory store, through the same code.

Keys are unique per call: each process counts its calls of each name, for the whole life
of the process (a sweep builds a team per cell on one store), and since every process makes
the same calls in the same order, the n-th call means the same thing everywhere. A second
run of a stage in the same job (a sweep's next cell) gets new keys.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from nsa.errors import NSAError

POLL_S = 0.2  # how often a waiting process reads the store
BEAT_S = 1.0  # how often each process's pulse thread says it is alive
QUIET_S = 120.0  # a process whose pulse has not moved for this long is taken for dead
ACK_S = 10.0  # how long process 0, failing, waits for the others to read its error

# Per process, not per team: a process may build many teams on one store (a sweep's cells),
# and a key must never be reused. One pulse thread per process, for the same reason.
_CALLS: Counter[str] = Counter()
_PULSES: dict[int, _Pulse] = {}


class Team:
    """``rank`` of ``size`` processes sharing a stage's shards; rank 0 leads (prints, writes stats).

    ``job_rank`` / ``job_size`` place the process in the whole job, whose members all watch
    for errors and dead processes; ``local_rank`` / ``local_size`` place it on its node, which
    decides the devices it owns. ``store`` is the job's torch.distributed store.
    """

    def __init__(
        self,
        store: Any,
        rank: int = 0,
        size: int = 1,
        prefix: str = "nsa/job",
        job_rank: int = 0,
        job_size: int = 1,
        local_rank: int = 0,
        local_size: int = 1,
        quiet_s: float = QUIET_S,
    ) -> None:
        self.store, self.prefix = store, prefix
        self.rank, self.size = rank, size
        self.job_rank, self.job_size = job_rank, job_size
        self.local_rank, self.local_size = local_rank, local_size
        self.quiet_s = quiet_s
        self._pulse = _pulse(store, job_rank) if job_size > 1 else None
        self._heard: dict[int, tuple[bytes, float]] = {}
        self._last_watch = time.monotonic()

    @classmethod
    def alone(cls) -> Team:
        """One process: an in-memory store, nobody to wait for."""
        from torch.distributed import HashStore

        return cls(HashStore())

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def key(self, name: str, job: bool = False) -> str:
        """A key for this process's next call named ``name`` (the same call on every process),
        in the team's namespace, or the job's with ``job``."""
        name = f"{'nsa' if job else self.prefix}/{name}"
        _CALLS[name] += 1
        return f"{name}#{_CALLS[name]}"

    @contextlib.contextmanager
    def guard(self) -> Iterator[Team]:
        """Any error inside stops every process of the job: it is written to the store. A store
        that stopped answering (process 0, its host, is gone) is a one-line error too."""
        from torch.distributed import DistError

        try:
            yield self
        except DistError as err:
            raise NSAError(
                f"lost the job's store, kept by process 0: it stopped (its error is above); run the same "
                f"command again, finished shards are kept ({_first_line(err)})"
            ) from None
        except BaseException as err:
            self.fail(err)
            raise

    def fail(self, err: BaseException) -> None:
        """Tells the job this process stopped with ``err`` (the first error is kept)."""
        text = _first_line(err) if isinstance(err, NSAError) else f"{type(err).__name__}: {_first_line(err)}"
        with contextlib.suppress(Exception):  # best effort: the store may be gone as well
            if self.job_size > 1 and not self.store.check(["nsa/error"]):
                self.store.set("nsa/error", f"process {self.job_rank} failed: {text.rstrip(': ')}")
                if self.job_rank == 0:  # it hosts the store: the others must read the error first
                    deadline = time.monotonic() + min(ACK_S, self.quiet_s)
                    while self.store.add("nsa/error_read", 0) < self.job_size - 1 and time.monotonic() < deadline:
                        time.sleep(POLL_S)

    def wait(self, ready: Callable[[], bool]) -> None:
        """Polls until ``ready()``; stops with another process's error, or when one goes quiet."""
        while not ready():
            self.check()
            time.sleep(POLL_S)

    def check(self) -> None:
        """Raises the error another process of the job stopped with, if any."""
        if self.job_size == 1:
            return
        if self.store.check(["nsa/error"]):
            message = self.store.get("nsa/error").decode()
            self.store.add("nsa/error_read", 1)  # process 0 may be waiting to exit
            raise NSAError(message)
        if time.monotonic() - self._last_watch > min(5 * BEAT_S, self.quiet_s / 3):
            self._watch()

    def _watch(self) -> None:
        """Every process's pulse count must move at least once in ``quiet_s``. One store call:
        each process watches every process, so the store's load grows with the job squared."""
        now = self._last_watch = time.monotonic()
        keys = [f"nsa/beat/{rank}" for rank in range(self.job_size)]
        if not self.store.check(keys):
            return  # a process not yet pulsing is not watched yet
        for rank, beats in enumerate(self.store.multi_get(keys)):
            seen, since = self._heard.get(rank, (b"", now))
            if beats != seen:
                self._heard[rank] = (beats, now)
            elif now - since > self.quiet_s:
                raise NSAError(
                    f"process {rank} has not answered for {now - since:.0f} s (killed?); "
                    "run the same command again: finished shards are kept"
                )

    def barrier(self, name: str, job: bool = False) -> None:
        """Waits, polling, until every process of the team (or of the whole job) has arrived."""
        key, size = self.key(name, job), (self.job_size if job else self.size)
        if self.store.add(key, 1) < size:
            self.wait(lambda: self.store.add(key, 0) >= size)

    def leave(self) -> None:
        """The job's processes leave together, process 0 last: it hosts the store, and a
        process still reading it after its host exited would fail."""
        key = self.key("leave", job=True)
        if self.store.add(f"{key}/arrived", 1) < self.job_size:
            self.wait(lambda: self.store.add(f"{key}/arrived", 0) >= self.job_size)
        if self.job_rank == 0:
            self.wait(lambda: self.store.add(f"{key}/left", 0) >= self.job_size - 1)
        elif self.job_size > 1:
            self.store.add(f"{key}/left", 1)  # the last store call of this process

    def agree(self, name: str, value: str) -> str:
        """The leader's ``value``, once every process has arrived: the team takes one path."""
        key = self.key(name)
        self.store.add(f"{key}/arrived", 1)
        if self.leads:
            self.wait(lambda: self.store.add(f"{key}/arrived", 0) >= self.size)
            self.store.set(key, value)
        self.wait(lambda: self.store.check([key]))
        return self.store.get(key).decode()

    def total(self, name: str, counts: dict[str, float]) -> dict[str, float]:
        """``counts`` summed over the team's processes (each posts its own)."""
        key = self.key(name)
        self.store.set(f"{key}/{self.rank}", json.dumps(counts))
        parts = [f"{key}/{r}" for r in range(self.size)]
        self.wait(lambda: self.store.check(parts))
        summed: Counter[str] = Counter()
        for part in parts:
            summed.update(json.loads(self.store.get(part)))
        return {k: float(v) for k, v in summed.items()}

    def share(self, name: str, n: int, work: Callable[[int], bool], takes_part: bool, progress: Any) -> list[int]:
        """Runs ``work(i)`` once for each i < n across the team: each process takes the next
        index from a store counter until none is left, then waits for the others. ``work``
        returns whether it computed (False: already done). ``progress`` (a tqdm bar, on the
        leader) follows the team's count. Returns how many each process computed."""
        key = self.key(name)
        follow = self._pulse.follow(f"{key}/done", progress) if self._pulse and self.leads else contextlib.nullcontext()
        with follow:
            while takes_part and (i := self._take(f"{key}/next")) < n:
                if work(i):
                    self.store.add(f"{key}/by/{self.rank}", 1)
                _show(progress, self.store.add(f"{key}/done", 1))
            self.wait(lambda: _show(progress, self.store.add(f"{key}/done", 0)) >= n)
        return [self.store.add(f"{key}/by/{r}", 0) for r in range(self.size)]

    def _take(self, key: str) -> int:
        self.check()  # no new shard once another process has failed
        return self.store.add(key, 1) - 1


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _show(progress: Any, done: int) -> int:
    if progress is not None and done != progress.n:
        progress.n = done  # assigned, not added: the pulse thread sets it too
        progress.refresh()
    return done


class _Pulse:
    """A daemon thread on its own store connection: it counts up ``nsa/beat/<rank>`` every
    ``BEAT_S`` so the others know this process is alive (even inside a long shard), and
    refreshes the leader's progress bar from the team's counter."""

    def __init__(self, store: Any, rank: int) -> None:
        self._store, self._rank = store.clone(), rank
        self._followed: tuple[str, Any] | None = None
        threading.Thread(target=self._run, name="nsa-pulse", daemon=True).start()

    @contextlib.contextmanager
    def follow(self, key: str, bar: Any) -> Iterator[None]:
        self._followed = (key, bar) if bar is not None else None
        try:
            yield
        finally:
            self._followed = None

    def _run(self) -> None:
        while True:  # a daemon: it ends with the process
            with contextlib.suppress(Exception):  # a late or lost store: beat again next time
                self._store.add(f"nsa/beat/{self._rank}", 1)
            with contextlib.suppress(Exception):
                followed = self._followed
                if followed is not None:
                    _show(followed[1], self._store.add(followed[0], 0))
            time.sleep(BEAT_S)


def _pulse(store: Any, rank: int) -> _Pulse:
    """This process's pulse, started once."""
    if rank not in _PULSES:
        _PULSES[rank] = _Pulse(store, rank)
    return _PULSES[rank]


def of_job(global_rank: int, world_size: int, node_rank: int, local_rank: int, local_size: int, shared: bool) -> Team:
    """The team of this process in an initialised torch.distributed job: the whole job when
    the nodes share the cache (``shared``), else this node's processes."""
    from torch.distributed import distributed_c10d

    store = distributed_c10d._get_default_store()  # the job's own store; nsa runs no server of its own
    if shared:
        return Team(store, global_rank, world_size, "nsa/job", global_rank, world_size, local_rank, local_size)
    return Team(store, local_rank, local_size, f"nsa/node{node_rank}", global_rank, world_size, local_rank, local_size)


def of_trainer(trainer: Any, shared: bool) -> Team:
    """The team of a Lightning trainer's process; alone when the job has one process."""
    import torch.distributed as dist

    if trainer is None or trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return Team.alone()
    return of_job(
        trainer.global_rank, trainer.world_size, trainer.node_rank, trainer.local_rank, trainer.num_devices, shared
    )


def check_span(team: Team, span: int, who: str) -> None:
    """A placement that cannot work fails here, before any stage: an engine spans ``span`` of a
    node's processes, each owning one device (its GPU, or on a CPU a share of the cores), and
    the process leading it must see the GPUs it will pin (see nsa.vllm_worker)."""
    if span < 1 or team.local_size % span:
        raise NSAError(
            f"{who}: engine.tensor_parallel_size {span} must divide the {team.local_size} processes of a node "
            "(trainer.devices: one per GPU); lower it or set trainer.devices to a multiple of it"
        )
    if takes_part(team, span):
        from nsa.vllm_worker import engine_devices

        engine_devices(span)  # a one-line error when this process cannot see GPUs r..r+span-1


def takes_part(team: Team, span: int) -> bool:
    """Whether this process leads an engine of ``span`` devices: the first of each group of
    ``span`` local processes; the others wait while the stage runs."""
    return team.local_rank % span == 0


def muted(team: Team) -> contextlib.AbstractContextManager:
    """Silences stderr on every process but the leader: one copy of each notice."""
    return contextlib.nullcontext() if team.leads else contextlib.redirect_stderr(io.StringIO())


def say(team: Team, message: str) -> None:
    if team.leads:
        print(message, file=sys.stderr)
