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


HEAVY = ("torch", "lightning", "transformers", "datasets", "vllm")
PROBE = """
import sys
from nsa.cli import main
try:
    main({args!r})
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
"""


def probe(tmp_path, args: list[str]) -> tuple[str, list[str]]:
    """Runs ``main(args)`` in a fresh interpreter: its stdout, and which heavy packages it imported."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "100"}
    code = PROBE.format(args=args, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    heavy = done.stderr.strip().splitlines()[-1].removeprefix("HEAVY:")
    return done.stdout, [m for m in heavy.split(",") if m]


@pytest.mark.multiprocess
def test_help_and_plugins_import_nothing_heavy(tmp_path):
    """`nsa --help` and `nsa plugins` read the command table and metadata only (0.5 s, where
    importing Lightning took 15 s of CPU on the 2-core machine)."""
    out, heavy = probe(tmp_path, ["--help"])
    assert heavy == [] and "nsa judge-eval --file F --judge J" in out and "losses: BCPG" in out
    out, heavy = probe(tmp_path, ["plugins"])
    assert heavy == [] and "BCPG" in out


@pytest.mark.multiprocess
def test_a_command_help_is_rendered_once_then_read_back(tmp_path):
    first, heavy = probe(tmp_path, ["prepare", "--help"])
    assert "torch" in heavy and "--data.tokens_per_micro_batch" in first
    again, heavy = probe(tmp_path, ["prepare", "--help"])
    assert heavy == [] and again == first
    assert len(list((tmp_path / "cache" / "nsa" / "help").glob("prepare-*.txt"))) == 1


def test_every_command_in_the_table_has_a_target():
    """The table names each command's function by string: a typo would surface only when run."""
    import importlib

    from nsa.cli import COMMANDS

    for command in COMMANDS.values():
        module, _, function = command.target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), command.name


def test_nsa_debug_shows_the_traceback_behind_the_one_line(monkeypatch, capsys, tmp_path):
    from nsa.errors import NSAError

    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", missing])
    assert capsys.readouterr().err.strip() == f"nsa: error: recipe file not found: {missing}"
    monkeypatch.setenv("NSA_DEBUG", "1")
    with pytest.raises(NSAError, match="recipe file not found"):
        main(["fit", "--config", missing])


def test_the_readme_override_forms(tmp_path, tiny_model, capsys):
    """The README's forms for plugin slots, with short names: a single slot, a list replaced,
    appended to, and the appended entry's argument."""
    import yaml

    from tests.recipe import tiny_recipe

    recipe = str(tiny_recipe(tmp_path, tiny_model))
    forms = [
        "--data.segmenter=ParagraphSegmenter",
        "--data.judges=[ArithmeticJudge]",
        "--data.judges+=ArithmeticJudge",
        "--data.judges.init_args.threshold=0.7",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", recipe, *forms, "--print_config"])
    assert exit_info.value.code in (0, None)
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["segmenter"]["class_path"] == "nsa.plugins.segmenters.paragraph.ParagraphSegmenter"
    judges = [(j["class_path"].rsplit(".", 1)[1], j["init_args"]["threshold"]) for j in data["judges"]]
    assert judges == [("ArithmeticJudge", 0.5), ("ArithmeticJudge", 0.7)]


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ("frobnicate", "unknown command 'frobnicate': the commands are fit, prepare"),
        ("prepair", "did you mean 'prepare'?"),
    ],
)
def test_an_unknown_command_lists_the_commands(capsys, command, needle):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", "x.yaml"])
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err
