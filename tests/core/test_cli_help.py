"""`nsa --help` explains the extra subcommands; `nsa plugins` prints the table."""

from __future__ import annotations

import pytest

from nsa.cli import main


def test_top_level_help_names_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for line in ("nsa fit --config R", "nsa prepare --config R", "nsa plugins"):
        assert line in out
    assert "validate" not in out  # NSAModule has no validation loop: not offered


def test_plugins_table_lists_builtins(capsys):
    main(["plugins"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["kind", "name", "class_path", "from"]
    assert any(r.split()[:3] == ["losses", "BCPG", "nsa.plugins.losses.bcpg.BCPG"] for r in rows)


def test_help_for_one_plugin_by_short_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.loss.help", "BCPG"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "--model.loss.beta" in out and "--model.loss.tau" in out
