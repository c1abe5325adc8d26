"""MathVerifier: scores a response 1.0 when math-verify finds its final answer equal to the reference.

math-verify bounds its own work with ``signal.alarm``, which only works in a process's main thread
and cannot stop code stuck inside a C call. So every check runs in the main thread of a spawned
worker process under its own interval timer (``math_verify_worker``, which never imports torch), and
the parent also bounds each check's wall time: a worker that overruns is killed with its pool and the
remaining checks go on in a fresh pool.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from nsa.contracts import Outcome
from nsa.errors import NSAError
from nsa.plugins.verifiers.math_verify_worker import BAD_REFERENCE, STARTUP_S, check, init_worker

# The parent's grace on top of timeout_s: the worker's own timer should always fire first, so the
# parent only steps in (and pays for a new pool) when a worker is truly stuck.
_SLACK_S = 1.0
# What _run_bounded returns for a job the parent gave up on.
_TIMED_OUT = ("timed out",)


class MathVerifier:
    """Verifies final answers with math-verify, in a pool of worker processes.

    A response earns reward 1.0 when math-verify parses an answer from it and finds it equal to the
    reference (parsed as LaTeX math, so a plain ``69`` or ``1/2`` works), else 0.0. The status says
    why: ``ok`` (checked), ``empty`` (blank response, never sent to a worker), ``no_answer``
    (math-verify found no answer in it) or ``timeout`` (the check took longer than ``timeout_s``).
    ``workers`` processes check responses in parallel. The pool stays warm between calls (each
    stage shard is one call; starting workers costs seconds) until a check overruns.
    """

    def __init__(self, timeout_s: float = 5.0, workers: int = 2) -> None:
        if timeout_s <= 0 or workers < 1:
            raise ValueError(f"MathVerifier needs timeout_s > 0 and workers >= 1, got {timeout_s}, {workers}")
        self.timeout_s = timeout_s
        self.workers = workers
        self._pool: _WorkerPool | None = None

    def close(self) -> None:
        """Stop the warm workers; nsa calls this when the verify stage is done.

        Between calls every worker is idle, so killing is safe, and unlike a polite shutdown
        it does not wait for each worker to tear torch down.
        """
        if getattr(self, "_pool", None) is not None:
            self._pool.close(kill=True)
            self._pool = None

    def __del__(self) -> None:
        self.close()  # idle workers hold torch and math-verify in memory

    def verify(self, references: Sequence[str], responses: Sequence[str]) -> list[Outcome]:
        if len(references) != len(responses):
            raise ValueError(f"MathVerifier got {len(references)} references for {len(responses)} responses")
        todo = [index for index, text in enumerate(responses) if text.strip()]
        jobs = [(references[index], responses[index], self.timeout_s) for index in todo]
        checked: list[Any] = []
        if jobs:
            pool, self._pool = self._pool, None  # a failed call must not leave a dead pool behind
            checked, self._pool = _run_bounded(check, jobs, self.workers, self.timeout_s + _SLACK_S, pool)
        outcomes = [Outcome(0.0, "empty")] * len(responses)
        for index, result in zip(todo, checked, strict=True):
            if result == (0.0, BAD_REFERENCE):
                raise NSAError(
                    f"reference answer {references[index]!r} could not be parsed by math-verify; "
                    "fix the answer field of the problem"
                )
            outcomes[index] = Outcome(0.0, "timeout") if result is _TIMED_OUT else Outcome(*result)
        return outcomes


class _WorkerPool:
    """A spawn-context process pool whose workers are all started and warm, and can be killed."""

    def __init__(self, workers: int) -> None:
        # spawn, not fork: the parent holds torch threads and possibly CUDA state.
        context = mp.get_context("spawn")
        pid_queue = context.SimpleQueue()
        self.workers = workers
        self.executor = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=init_worker,
            initargs=(context.Barrier(workers), pid_queue),
        )
        # Workers spawn lazily, one per submit; the barrier holds each until all are warm, so once
        # these no-ops return, every worker is idle and a job's clock starts when it is submitted.
        warm_up = [self.executor.submit(os.getpid) for _ in range(workers)]
        done, _ = wait(warm_up, timeout=STARTUP_S + 10)
        if len(done) < workers or any(future.exception() for future in done):
            self.executor.shutdown(wait=False, cancel_futures=True)
            raise NSAError(
                "the math-verify worker pool failed to start; workers are spawned, so a script that "
                "runs nsa must guard its entry point with `if __name__ == '__main__':`"
            )
        # Every worker put its pid before reaching the barrier, so these never block.
        self._pids = [pid_queue.get() for _ in range(workers)]

    def close(self, kill: bool) -> None:
        """Shut down; with ``kill``, first SIGKILL the workers (one may be stuck in C code)."""
        for pid in self._pids if kill else []:
            with contextlib.suppress(ProcessLookupError):  # it may have exited already
                os.kill(pid, signal.SIGKILL)
        # No waiting: idle workers exit on their own (tearing down torch takes a second), and the
        # executor's thread reaps them in the background.
        self.executor.shutdown(wait=False, cancel_futures=True)


def _run_bounded(
    task: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    workers: int,
    limit_s: float,
    pool: _WorkerPool | None = None,
) -> tuple[list[Any], _WorkerPool | None]:
    """Run ``task(*job)`` for each job in worker processes; a job not done in limit_s gives _TIMED_OUT.

    Reuses ``pool`` when given; returns the results and the pool, still warm, or None when a job
    overran and the pool had to be killed.
    """
    results: list[Any] = [_TIMED_OUT] * len(jobs)
    pending = deque(range(len(jobs)))
    while pending:
        pool = pool or _WorkerPool(workers)
        overran = True  # also kills the workers if we are interrupted (KeyboardInterrupt)
        try:
            overran = not _drain(pool, task, jobs, pending, results, limit_s)
        except BrokenProcessPool as err:
            pool.close(kill=False)  # the executor has already reaped its workers: their pids may be reused
            raise RuntimeError("a math-verify worker died (out of memory?)") from err
        finally:
            if overran:
                pool.close(kill=True)
                pool = None
    return results, pool


def _drain(
    pool: _WorkerPool,
    task: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    pending: deque[int],
    results: list[Any],
    limit_s: float,
) -> bool:
    """Feed pending jobs to the pool; False as soon as one overruns, which leaves the pool unusable."""
    running: dict[Future[Any], tuple[int, float]] = {}
    while pending or running:
        # Never more jobs in flight than workers, so each starts at once and its clock is fair.
        while pending and len(running) < pool.workers:
            index = pending.popleft()
            running[pool.executor.submit(task, *jobs[index])] = (index, time.monotonic() + limit_s)
        first_deadline = min(deadline for _, deadline in running.values())
        done, _ = wait(running, timeout=max(0.0, first_deadline - time.monotonic()), return_when=FIRST_COMPLETED)
        for future in done:
            results[running.pop(future)[0]] = future.result()
        now = time.monotonic()
        if any(deadline <= now for _, deadline in running.values()):
            # Overdue jobs keep _TIMED_OUT; the others lose their progress with the pool: rerun them.
            pending.extend(index for index, deadline in running.values() if deadline > now)
            return False
    return True
