"""nsa's one way to warn (``nsa.log``): one line on stderr, for core and for plugins alike."""

from __future__ import annotations

import logging

from nsa.log import notice, warn


def test_core_and_plugins_warn_in_one_format(capsys, caplog):
    warn("dropped 3 answers")
    notice("training on padded micro-batches")
    logging.getLogger("nsa.plugins.judges.llm").warning("LLMJudge: %d steps unjudged", 2)
    logging.getLogger("elsewhere").warning("not ours")  # another library's logger keeps its own format
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "nsa: warning: dropped 3 answers",
        "nsa: notice: training on padded micro-batches",
        "nsa: warning: LLMJudge: 2 steps unjudged",
    ]
    assert captured.out == ""
    assert "dropped 3 answers" in caplog.text  # records reach the root logger too


def test_a_researcher_silences_them_as_any_logging(capsys):
    nsa_logger = logging.getLogger("nsa")
    level = nsa_logger.level
    nsa_logger.setLevel(logging.ERROR)
    try:
        warn("quiet")
    finally:
        nsa_logger.setLevel(level)
    assert capsys.readouterr().err == ""
