"""The one text table formatter (nsa.tables), and the two tables built on it, byte for byte."""

from __future__ import annotations

from nsa import evaluate, sweep
from nsa.tables import format_table


def test_a_table_left_aligns_names_and_right_aligns_numbers():
    table = format_table(["cell", "loss", "pass@4"], [["a", "0.5", "-"], ["longer name", "12.25", "100"]])
    assert table == "cell          loss  pass@4\na              0.5       -\nlonger name  12.25     100"


def test_a_header_alone_is_one_line():
    assert format_table(["benchmark", "problems"], []) == "benchmark  problems"


def test_the_evaluation_table_with_its_mean_golden():
    rows = [
        {
            "benchmark": "math500",
            "problems": 3,
            "dropped": 0,
            "avg@4": 16.666666,
            "pass@4": 66.66667,
            "truncated%": 0.0,
        },
        {"benchmark": "gsm8k", "problems": 120, "dropped": 7, "avg@4": 12.5, "pass@4": 50.0, "truncated%": 100.0},
    ]
    assert evaluate.format_table(rows) == (
        "benchmark  problems  dropped  avg@4  pass@4  truncated%\n"
        "math500           3        0  16.67   66.67        0.00\n"
        "gsm8k           120        7  12.50   50.00      100.00\n"
        "mean                          14.58   58.33       50.00"
    )


def test_the_sweep_summary_golden():
    rows = [
        {"cell": "beta=1.0", "train/loss": 0.123456, "eval/math500/pass_at_4": None},
        {"cell": "rft", "train/loss": 12.5, "eval/math500/pass_at_4": 66.6667},
    ]
    assert sweep.format_summary(["train/loss", "eval/math500/pass_at_4"], rows) == (
        "cell      train/loss  eval/math500/pass_at_4\n"
        "beta=1.0      0.1235                       -\n"
        "rft             12.5                   66.67"
    )
