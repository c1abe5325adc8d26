"""Batch judging (``LLMJudge(mode="batch")``): a shard's requests go to the provider's batch
API (OpenAI's Batch API, Anthropic's Message Batches: half the price, no rate limits to juggle).

No request is ever paid twice. Each set of requests has a journal (``<batch_dir>/<digest>.json``,
the digest of the backend, model and every request body): a batch's id is written there as
soon as the provider returns it, before any waiting, and every finished reply is kept there.
A killed run that judges the same shard again finds the journal, waits on the recorded batches
and submits nothing. A batch that expired or was cancelled is resubmitted for its missing
requests only; a request the provider answered with an error is unjudged, not resent.

A backend that batches has ``submit(requests, key) -> batch id``, ``poll(batch id, key) ->
(ended, requests done)`` and ``results(batch id, key) -> {custom id: reply text, a Failed, or
None for a request never processed}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from nsa.plugins.judges.remote import Count, Failed

MAX_SUBMISSIONS = 3  # a set of requests is submitted at most this often (expiries included)


class Journal:
    """One set of requests' batches and finished replies, rewritten atomically after each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        state = json.loads(path.read_text()) if path.exists() else {"batches": [], "replies": {}, "failed": {}}
        self.batches: list[dict[str, Any]] = state["batches"]  # {"id", "ids", "open"}
        self.replies: dict[str, str] = state["replies"]
        self.failed: dict[str, str] = state["failed"]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        scratch.write_text(json.dumps({"batches": self.batches, "replies": self.replies, "failed": self.failed}))
        os.replace(scratch, self.path)

    def open(self) -> list[dict[str, Any]]:
        return [b for b in self.batches if b["open"]]

    def missing(self, ids: list[str]) -> list[str]:
        return [i for i in ids if i not in self.replies and i not in self.failed]


def digest(identity: object, requests: list[tuple[str, int]]) -> str:
    blob = json.dumps([identity, requests], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def batch_replies(
    backend: Any, requests: list[tuple[str, int]], key: str | None, journal: Journal, poll_s: float, count: Count
) -> list[str | Failed]:
    """The replies to ``requests`` through the backend's batch API, resuming what the journal recorded."""
    ids = [f"request-{i}" for i in range(len(requests))]
    by_id = dict(zip(ids, requests, strict=True))
    with tqdm(total=len(ids), desc="LLMJudge batch", unit="request", leave=False) as bar:
        for _ in range(MAX_SUBMISSIONS):
            missing = journal.missing(ids)
            if not missing:
                break
            if not journal.open():  # nothing in flight: submit what is missing, and record it before waiting
                batch_id = backend.submit({i: by_id[i] for i in missing}, key)
                count("requests", len(missing))
                journal.batches.append({"id": batch_id, "ids": missing, "open": True})
                journal.save()
            for batch in journal.open():
                wait(backend, batch, key, poll_s, bar, len(ids) - len(journal.missing(ids)))
                finish(journal, batch, backend.results(batch["id"], key), count)
    expired = "expired or cancelled in every batch"
    return [journal.replies[i] if i in journal.replies else Failed(False, journal.failed.get(i, expired)) for i in ids]


def wait(backend: Any, batch: dict[str, Any], key: str | None, poll_s: float, bar: tqdm, before: int) -> None:
    """Polls until the batch ends; ``bar`` counts requests done across batches (``before`` of them earlier)."""
    while True:
        ended, done = backend.poll(batch["id"], key)
        bar.update(max(0, before + done - bar.n))
        if ended:
            return
        time.sleep(poll_s)


def finish(journal: Journal, batch: dict[str, Any], results: dict[str, Any], count: Count) -> None:
    """Keep the batch's replies and errors; a request never processed (expired, cancelled) stays missing."""
    for cid in batch["ids"]:
        result = results.get(cid)
        if isinstance(result, Failed):
            journal.failed[cid] = result.reason
            count("failed", 1)
        elif isinstance(result, str):
            journal.replies[cid] = result
    batch["open"] = False
    journal.save()
