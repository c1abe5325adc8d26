"""Test plugins for jobs of several processes: a sampler that logs its calls and can stop, and
a verifier that gives a random model's answers mixed rewards.

Their options are private attributes, so they stay out of the cache key: a run that stops
midway and the run that finishes it share every stage, as a real rerun would.
"""

from __future__ import annotations

import os
import signal
import time
import zlib
from collections.abc import Sequence

from nsa.contracts import Completion, Outcome
from nsa.errors import NSAError
from tests.scripted import ScriptedSampler


def process_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class CountingSampler(ScriptedSampler):
    """The scripted answers. ``log``: a file that gets ``<rank> <shard key>`` per call (the
    key is a hash of the first prompt's ids). ``stop``: ``kill:R:N`` (SIGKILL) or ``raise:R:N``
    at process R's N-th call. ``delay_s``: the time each call takes."""

    def __init__(self, log: str = "", stop: str = "", delay_s: float = 0.0) -> None:
        super().__init__()
        self._log, self._stop, self._delay_s = log, stop, delay_s
        self._calls = 0

    def sample(self, model_dir: str, prompt_ids: Sequence[Sequence[int]]) -> list[list[Completion]]:
        self._calls += 1
        how, _, at = self._stop.partition(":")
        if how and at == f"{process_rank()}:{self._calls}":
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise NSAError(f"CountingSampler stopped at call {self._calls} on process {process_rank()}")
        time.sleep(self._delay_s)
        if self._log:
            with open(self._log, "a") as log:
                log.write(f"{process_rank()} {zlib.crc32(str(list(prompt_ids[0])).encode())}\n")
        return super().sample(model_dir, prompt_ids)


class ParityVerifier:
    """Reward 1 for an answer of even length in characters: a random model's answers get mixed
    rewards, so the method has groups to train on (a tiny random model solves nothing)."""

    def verify(self, references: Sequence[str], responses: Sequence[str]) -> list[Outcome]:
        return [Outcome(float(len(r) % 2 == 0), "ok") for r in responses]


class NaNOnProcessOne:
    """BCPG (beta 0.5), except that process 1's loss is NaN from its first micro-batch: only one
    process of the job sees a non-finite loss, so the other can learn of it only by all-reduce."""

    def __init__(self) -> None:
        from nsa.plugins.losses.bcpg import BCPG

        self._bcpg = BCPG(beta=0.5, tau=0.001)

    def __call__(self, batch, logprobs):
        from nsa.contracts import LossOutput

        out = self._bcpg(batch, logprobs)
        return LossOutput(out.loss * float("nan"), out.metrics) if process_rank() == 1 else out
