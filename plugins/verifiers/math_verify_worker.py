"""What MathVerifier's worker processes run: one bounded check, and the pool's initializer.

A worker is spawned, so it imports the module of every function it is sent. This one imports
only the standard library and math-verify, never torch (nsa.contracts): a worker starts in
about a second instead of several, which every verify stage and every test that verifies pays.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.queues import SimpleQueue
    from multiprocessing.synchronize import Barrier

# Worker-internal status, turned into an error by MathVerifier.verify(): a bad reference is a data bug.
BAD_REFERENCE = "bad_reference"
# How long a warm worker waits at the barrier for the others to be warm too.
STARTUP_S = 120.0


class CheckTimeout(BaseException):
    """The worker's alarm. A BaseException, so math-verify's ``except Exception`` cannot swallow it."""


def check(reference: str, response: str, timeout_s: float) -> tuple[float, str]:
    """Worker task: score one response, giving up after timeout_s seconds of its own time."""
    fired: list[int] = []

    def on_alarm(signum: int, frame: object) -> None:
        fired.append(signum)
        raise CheckTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    result = (0.0, "timeout")
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            result = compare(reference, response)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except CheckTimeout:
        pass  # an alarm landing in the inner finally is caught here too
    finally:
        signal.signal(signal.SIGALRM, previous)
    # `fired` also catches an alarm that some library code caught and ignored.
    return (0.0, "timeout") if fired else result


def compare(reference: str, response: str) -> tuple[float, str]:
    """Parse and compare with math-verify, its own alarms off (they share ITIMER_REAL with ours)."""
    import math_verify

    # Wrapped in $...$ so that a bare "69" or "1/2" parses as math rather than as nothing.
    gold = math_verify.parse("$" + reference + "$", parsing_timeout=None)
    if not gold:
        return 0.0, BAD_REFERENCE
    answer = math_verify.parse(response, parsing_timeout=None)
    if not answer:
        return 0.0, "no_answer"
    return float(math_verify.verify(gold, answer, timeout_seconds=None)), "ok"


def init_worker(barrier: Barrier, pids: SimpleQueue[int]) -> None:
    """Pool initializer: report the pid (for killing), warm up math-verify, then wait for the others."""
    import logging

    import math_verify

    pids.put(os.getpid())
    # We turn math-verify's alarms off on purpose; its warning about that is noise.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # The first parse loads the LaTeX grammar and sympy; pay that here, not in a timed check.
    gold, answer = (
        math_verify.parse("$1$", parsing_timeout=None),
        math_verify.parse("1", parsing_timeout=None),
    )
    math_verify.verify(gold, answer, timeout_seconds=None)
    barrier.wait(STARTUP_S)
