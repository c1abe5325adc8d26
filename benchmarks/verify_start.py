"""How long MathVerifier's worker pool takes to start, against workers that import torch.

Every verify stage (and every test that verifies) starts a pool of spawned workers. A worker
imports the module of each function it is sent; until the workers' code moved to
``math_verify_worker``, that module imported ``nsa.contracts`` and so torch. The baseline here
is that old start: the same initializer run after ``import nsa.contracts``. Rounds alternate the
two; each is scored by its quickest round (these machines are noisy).

    python -m benchmarks.verify_start            # from the repo root, about a minute
"""

from __future__ import annotations

import argparse
import time


def torch_then_init(barrier, pids) -> None:
    """The old worker's start: torch (through nsa.contracts), then the real initializer."""
    import nsa.contracts  # noqa: F401
    from nsa.plugins.verifiers.math_verify_worker import init_worker

    init_worker(barrier, pids)


def start_pool(workers: int, initializer) -> float:
    """Seconds until ``workers`` spawned workers are warm and have checked one answer each."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from nsa.plugins.verifiers.math_verify_worker import check

    context = mp.get_context("spawn")
    start = time.perf_counter()
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=initializer, initargs=(context.Barrier(workers), context.SimpleQueue())
    )
    results = [pool.submit(check, "69", "\\boxed{69}", 5.0) for _ in range(workers)]
    assert all(r.result() == (1.0, "ok") for r in results)
    elapsed = time.perf_counter() - start
    pool.shutdown(wait=True)
    return elapsed


def main() -> None:
    from nsa.plugins.verifiers.math_verify_worker import init_worker

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"torch (before)": [], "no torch (now)": []}
    for _ in range(args.rounds):
        times["torch (before)"].append(start_pool(args.workers, torch_then_init))
        times["no torch (now)"].append(start_pool(args.workers, init_worker))
    best = {name: min(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:16s} best {best[name]:5.2f} s   rounds {' '.join(f'{x:.2f}' for x in t)}")
    print(f"pool start, before / now: {best['torch (before)'] / best['no torch (now)']:.2f}x")


if __name__ == "__main__":
    main()
