"""Processes of one job share a stage's shards through the job's c10d store (nsa.team).

Real processes (spawned, gloo on 127.0.0.1; tests/teamwork.py) run a 12-shard stage whose
function doubles a number, logs the call and sleeps. What must hold:
- every shard is computed once across the processes, both take some, and each process gets
  the one-process output, rows in order;
- an error on one process stops the other with that error, not a hang;
- a SIGKILLed process is noticed when its pulse stops; a rerun computes only what is missing;
- two jobs on one cache do not corrupt it.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from torch.distributed import HashStore

from nsa.errors import NSAError
from nsa.stages.cache import run_stage
from nsa.team import Team, check_span, takes_part
from tests import teamwork

DOUBLED = [2 * x for x in range(teamwork.ROWS)]


def calls(folder: Path) -> dict[int, list[int]]:
    return {r: [int(x) for x in (folder / f"calls-{r}.txt").read_text().split()] for r in (0, 1)}


@pytest.mark.multiprocess
def test_two_processes_share_the_shards_once(tmp_path):
    """Stats are summed over the team: rows 12 + 12 = 24, mine (rank + 1) 1 + 2 = 3."""
    assert teamwork.launch(teamwork.share, 2, tmp_path) == [0, 0]
    done = calls(tmp_path)
    assert sorted(done[0] + done[1]) == list(range(teamwork.ROWS))  # each shard once
    assert done[0] and done[1]  # both worked
    for rank in (0, 1):
        out = json.loads((tmp_path / f"out-{rank}.json").read_text())
        assert out == {"rows": DOUBLED, "stats": {"rows": 24.0, "mine": 3.0}}
    (stage,) = (tmp_path / "cache" / "double").iterdir()
    assert json.loads((stage / "stats.json").read_text()) == {"rows": 24.0, "mine": 3.0}


@pytest.mark.multiprocess
def test_an_error_on_one_process_stops_both_with_it(tmp_path):
    assert teamwork.launch(teamwork.raise_on_one, 2, tmp_path, timeout_s=60) == [3, 3]
    assert "boom" in (tmp_path / "error-1.txt").read_text()
    assert (tmp_path / "error-0.txt").read_text().startswith("process 1 failed: ValueError: boom at row")


@pytest.mark.multiprocess
def test_an_error_on_process_0_reaches_the_others_before_its_store_goes(tmp_path):
    """Process 0 hosts the store; failing, it waits for the others to read its error."""
    assert teamwork.launch(teamwork.raise_on_zero, 2, tmp_path, timeout_s=60) == [3, 3]
    assert (tmp_path / "error-1.txt").read_text().startswith("process 0 failed: ValueError: boom at row")


@pytest.mark.multiprocess
def test_a_second_team_on_one_store_gets_keys_of_its_own(tmp_path):
    """Round 2's stage sums its own counters (factor 3 + 3), not round 1's (2 + 2)."""
    assert teamwork.launch(teamwork.two_teams, 2, tmp_path, timeout_s=60) == [0, 0]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"stats-2-{rank}.json").read_text()) == {"factor": 4.0}
        assert json.loads((tmp_path / f"stats-3-{rank}.json").read_text()) == {"factor": 6.0}


@pytest.mark.multiprocess
def test_a_cache_the_processes_do_not_share_fails_before_any_stage(tmp_path):
    assert teamwork.launch(teamwork.unshared, 2, tmp_path, timeout_s=60) == [3, 3]
    assert "is not shared: process 1 cannot see a file process 0 wrote" in (tmp_path / "error-1.txt").read_text()
    assert (tmp_path / "error-0.txt").read_text().startswith("process 1 failed: data.cache_dir")


@pytest.mark.multiprocess
def test_a_killed_process_is_noticed_and_a_rerun_computes_only_the_rest(tmp_path):
    codes = teamwork.launch(teamwork.kill_one, 2, tmp_path, timeout_s=60)
    assert codes == [3, -9]
    assert "process 1 has not answered" in (tmp_path / "error-0.txt").read_text()
    (stage,) = (tmp_path / "cache" / "double").iterdir()
    committed = {int(p.name.removeprefix("shard-")) for p in stage.glob("shard-*")}
    assert len(committed) < teamwork.ROWS and not (stage / "stats.json").exists()

    again: list[int] = []

    def fn(rows):
        again.append(rows["x"][0])
        return rows.map(lambda r: {"y": r["x"] * 2})

    out = run_stage(tmp_path / "cache", "double", teamwork.numbers(), {"factor": 2}, fn, 1)
    assert sorted(again) == sorted(set(range(teamwork.ROWS)) - committed)  # only the missing ones
    assert list(out.dataset["y"]) == DOUBLED


@pytest.mark.multiprocess
def test_two_jobs_on_one_cache_agree_and_leave_it_whole(tmp_path):
    context = multiprocessing.get_context("spawn")
    jobs = [context.Process(target=teamwork.alone, args=(str(tmp_path), job)) for job in (0, 1)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    assert [job.exitcode for job in jobs] == [0, 0]
    for job in (0, 1):
        assert json.loads((tmp_path / f"out-{job}.json").read_text())["rows"] == DOUBLED
    (stage,) = (tmp_path / "cache" / "double").iterdir()
    assert len(list(stage.glob("shard-*"))) == teamwork.ROWS
    assert not list(stage.glob(".tmp-*"))  # the losing copy of a shard computed twice is gone


@pytest.mark.parametrize(
    ("local_size", "span", "leaders"),
    [(4, 1, [0, 1, 2, 3]), (4, 2, [0, 2]), (4, 4, [0])],
)
def test_engines_are_led_by_every_span_th_local_process(local_size, span, leaders):
    """On a CPU a node's devices are its processes: 4 processes, engines of 2 -> 0 and 2 lead."""
    teams = [Team(HashStore(), rank=r, size=local_size, local_rank=r, local_size=local_size) for r in range(4)]
    for team in teams:
        check_span(team, span, "VLLMSampler")
    assert [t.local_rank for t in teams if takes_part(t, span)] == leaders


@pytest.mark.parametrize(("local_size", "span"), [(2, 3), (3, 2), (2, 0)])
def test_a_placement_that_cannot_work_is_one_line(local_size, span):
    team = Team(HashStore(), local_size=local_size)
    with pytest.raises(NSAError, match=f"VLLMSampler: engine.tensor_parallel_size {span} must divide the"):
        check_span(team, span, "VLLMSampler")
