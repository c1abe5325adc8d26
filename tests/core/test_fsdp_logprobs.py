"""The chunked, packed log-probs under FSDP (two processes, gloo, CPU): the scorer is the root
unit, so its forward runs with the root's sharded parameters gathered, the output layer's
weight (and, tied, the embeddings it shares) included, and their gradients are reduced
back into the shards.

Lightning refuses FSDP without a GPU, so this wraps the scorer as NSAModule.configure_model
does under Lightning's FSDP (``shard`` inside FSDP's wrapping context, ``use_orig_params``
as Lightning sets it) and runs it with torch.distributed directly. Each process scores half
the rows of a ragged batch; FSDP averages the gradients, which must equal the mean of the
two halves' gradients through the full-logits path on one process.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.core.test_logprobs import ragged_batch
from tests.tiny import build_model

pytestmark = pytest.mark.multiprocess


def weighted_sum(logprobs: torch.Tensor) -> torch.Tensor:
    return (logprobs * torch.linspace(-1, 1, logprobs.numel()).view_as(logprobs)).sum()


def sharded_grads(rank: int, world: int, port: int, folders: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import enable_wrap

    from nsa.logprobs import PolicyScorer
    from nsa.models import load_policy
    from nsa.module import shard

    results = []
    for folder in folders:
        with enable_wrap(wrapper_cls=FSDP, device_id=torch.device("cpu"), use_orig_params=True):
            scorer = shard(PolicyScorer(load_policy(folder), chunk_tokens=5))
        input_ids, mask = ragged_batch()
        weighted_sum(scorer(input_ids[rank::world], mask[rank::world], packed=True)).backward()
        with FSDP.summon_full_params(scorer, with_grads=True):
            grads = {name.removeprefix("model."): p.grad.clone() for name, p in scorer.named_parameters()}
        results.append((type(scorer).__name__, grads))
    if rank == 0:
        torch.save(results, out)
    # Without it, a rank that tears gloo down while the other is still saving has been seen
    # to abort ("terminate called without an active exception") once in a full CI run.
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp_gathers_the_output_layer_for_the_chunked_packed_path(tmp_path, tiny_model):
    from nsa.logprobs import token_logprobs
    from nsa.models import load_policy

    tied = str(build_model(tmp_path / "tied", tie_word_embeddings=True))
    out = str(tmp_path / "grads.pt")
    mp.spawn(sharded_grads, args=(2, free_port(), [tiny_model, tied], out), nprocs=2)
    for folder, (wrapper, grads) in zip([tiny_model, tied], torch.load(out)):
        assert wrapper == "FullyShardedDataParallel"
        model = load_policy(folder)
        input_ids, mask = ragged_batch()
        for rank in (0, 1):  # the full-logits path, each half in turn: gradients summed, then halved
            weighted_sum(token_logprobs(model, input_ids[rank::2], mask[rank::2], None)).backward()
        want = {name: p.grad / 2 for name, p in model.named_parameters()}
        assert set(grads) == set(want)
        for name, grad in want.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=0, msg=name)
