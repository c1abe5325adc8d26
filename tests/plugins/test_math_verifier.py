"""MathVerifier against the real math-verify, in real spawned worker processes (no mocks)."""

import multiprocessing
import time

import pytest

from nsa.contracts import Outcome, Verifier
from nsa.plugins.verifiers.math_verify import _TIMED_OUT, MathVerifier, _run_bounded

OK1, OK0 = Outcome(1.0, "ok"), Outcome(0.0, "ok")
EMPTY, NO_ANSWER = Outcome(0.0, "empty"), Outcome(0.0, "no_answer")

# (reference, response, expected): one batch, so the pool starts once for all of them.
MIXED = [
    ("69", "\\boxed{69}", OK1),
    ("69", "The answer is \\boxed{70}", OK0),
    ("69", "", EMPTY),
    ("69", "I am not sure.", NO_ANSWER),
    ("1/2", "\\boxed{0.5}", OK1),
    ("\\frac{1}{2}", "So $x = \\boxed{\\frac{1}{2}}$.", OK1),
    ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}", OK1),
    ("-3", "\\boxed{3}", OK0),
    ("10", "   \n\t ", EMPTY),
    ("x^2+1", "\\boxed{1 + x^2}", OK1),
    ("7", "The final answer is $7$.", OK1),
    ("7", "no idea", NO_ANSWER),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", OK1),
    ("3.14", "\\boxed{3.14}", OK1),
    ("100", "\\boxed{99}", OK0),
    ("0.25", "\\boxed{\\frac{1}{4}}", OK1),
    ("\\infty", "\\boxed{\\infty}", OK1),
    ("12", "First 5, then 7, so \\boxed{12}", OK1),
    ("5", "", EMPTY),
    ("8", "\\boxed{2^3}", OK1),
]


@pytest.fixture(scope="module")
def mixed() -> list[Outcome]:
    verifier = MathVerifier(timeout_s=5.0, workers=2)
    return verifier.verify([ref for ref, _, _ in MIXED], [resp for _, resp, _ in MIXED])


def test_meets_the_verifier_contract_and_hashes_only_its_config() -> None:
    verifier = MathVerifier(timeout_s=1.5, workers=3)
    assert isinstance(verifier, Verifier)
    public = {name: value for name, value in vars(verifier).items() if not name.startswith("_")}
    assert public == {"timeout_s": 1.5, "workers": 3}


def test_boxed_answer_equal_to_reference(mixed: list[Outcome]) -> None:
    assert mixed[0] == Outcome(1.0, "ok")


def test_wrong_answer_scores_zero_but_is_checked(mixed: list[Outcome]) -> None:
    assert mixed[1] == Outcome(0.0, "ok")


def test_empty_response(mixed: list[Outcome]) -> None:
    assert mixed[2] == Outcome(0.0, "empty")


def test_response_without_an_answer(mixed: list[Outcome]) -> None:
    assert mixed[3] == Outcome(0.0, "no_answer")


def test_equal_values_in_different_forms(mixed: list[Outcome]) -> None:
    assert mixed[4] == Outcome(1.0, "ok")  # 1/2 vs \boxed{0.5}


def test_mixed_batch_is_scored_in_order(mixed: list[Outcome]) -> None:
    assert mixed == [expected for _, _, expected in MIXED]


def test_blank_responses_send_no_work_to_a_pool() -> None:
    # Starting a worker pool takes seconds (spawn, imports): a pool-free call returns at once.
    start = time.monotonic()
    outcomes = MathVerifier().verify(["69", "1"], ["", " \n "])
    assert outcomes == [EMPTY, EMPTY]
    assert time.monotonic() - start < 1.0


def test_slow_check_times_out_and_the_batch_goes_on() -> None:
    # A real pathological answer: sympy tries to evaluate 9^(9^(9^9)), which never finishes.
    verifier = MathVerifier(timeout_s=0.5, workers=1)
    start = time.monotonic()
    outcomes = verifier.verify(["1", "69"], ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{69}"])
    elapsed = time.monotonic() - start
    assert outcomes == [Outcome(0.0, "timeout"), OK1]
    assert elapsed < 15.0  # a pool start (a few seconds) plus 0.5 s, with room for a slow CI box


def test_stuck_worker_is_killed_and_a_fresh_pool_finishes_the_rest() -> None:
    # time.sleep sets no alarm, so only the parent's bound can end it: the pool must be killed.
    start = time.monotonic()
    before = set(multiprocessing.active_children())  # other tests' verifiers may still be warm
    results, pool = _run_bounded(time.sleep, [(60.0,), (0.0,)], workers=1, limit_s=0.5)
    pool.close(kill=False)
    assert results[0] is _TIMED_OUT
    assert results[1] is None  # time.sleep's own result: the second job ran in a fresh pool
    assert time.monotonic() - start < 20.0  # two pool starts, far below the 60 s sleep
    # The sleeper was killed, not left behind: soon no worker process of ours is alive.
    deadline = time.monotonic() + 10.0
    while set(multiprocessing.active_children()) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(multiprocessing.active_children()) - before == set()


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 references for 1 responses"):
        MathVerifier().verify(["1", "2"], ["\\boxed{1}"])


def test_unparseable_reference_is_named() -> None:
    with pytest.raises(ValueError, match="reference answer '' could not be parsed by math-verify"):
        MathVerifier(workers=1).verify(["69", ""], ["\\boxed{69}", "\\boxed{3}"])


@pytest.mark.parametrize(("timeout_s", "workers"), [(0.0, 2), (-1.0, 2), (5.0, 0)])
def test_bad_settings_are_refused(timeout_s: float, workers: int) -> None:
    with pytest.raises(ValueError, match="timeout_s > 0 and workers >= 1"):
        MathVerifier(timeout_s=timeout_s, workers=workers)


def test_pool_stays_warm_between_calls() -> None:
    """Each stage shard is one call: the workers started for the first serve the next."""
    verifier = MathVerifier(workers=1)
    assert verifier.verify(["5"], ["\\boxed{5}"]) == [OK1]
    first = verifier._pool
    assert verifier.verify(["6"], ["\\boxed{5}"]) == [OK0]
    assert verifier._pool is first and first is not None
    first.close(kill=False)


def test_dropping_the_verifier_stops_its_workers() -> None:
    before = set(multiprocessing.active_children())
    verifier = MathVerifier(workers=1)
    verifier.verify(["5"], ["\\boxed{5}"])
    workers = [p for p in multiprocessing.active_children() if p not in before]
    assert workers
    del verifier
    # Poll rather than join once: the executor's own thread may reap a worker while join waits on
    # it, and join then returns with the exit status unrecorded; a later is_alive() reads it.
    deadline = time.monotonic() + 10.0
    while any(worker.is_alive() for worker in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(worker.is_alive() for worker in workers)


def test_close_stops_the_workers_and_a_later_call_starts_new_ones() -> None:
    verifier = MathVerifier(workers=1)
    verifier.verify(["5"], ["\\boxed{5}"])
    verifier.close()
    assert verifier._pool is None
    assert verifier.verify(["5"], ["\\boxed{5}"]) == [OK1]
    verifier.close()


def test_warm_workers_never_load_torch() -> None:
    """A worker imports only what it is sent (math_verify_worker: the standard library and
    math-verify). Its memory map is read from /proc: no libtorch library is in it, so every
    verify stage's pool starts without paying for torch."""
    verifier = MathVerifier(workers=2)
    assert verifier.verify(["69"], ["\\boxed{69}"]) == [OK1]
    maps = [open(f"/proc/{pid}/maps").read() for pid in verifier._pool._pids]
    verifier.close()
    assert len(maps) == 2 and all("python3" in m for m in maps)  # the interpreter's own files are mapped
    assert not any("libtorch" in m for m in maps)
