"""Third-party plugins, with nothing pip-installed: found, resolved by short name, listed.

A fake site directory in tmp_path holds a package (``acme_nsa``) and its ``.dist-info``
advertising a loss in ``nsa.losses``, exactly as ``pip install`` would leave them.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from nsa import registry
from nsa.cli import main
from tests.recipe import tiny_recipe

REPO = Path(__file__).resolve().parents[2]

HALF_RFT = '''
from __future__ import annotations

import torch
from nsa.contracts import LossOutput, PolicyBatch


class HalfRFT:
    """RFT's loss times one half."""

    def __call__(self, batch: PolicyBatch, logprobs: torch.Tensor) -> LossOutput:
        mask = batch.response_mask.float()
        positive = (batch.reward > 0.5).float()
        nll = -(logprobs * mask).sum(1) / mask.sum(1).clamp(min=1)
        loss = 0.5 * (nll * positive).sum() / max(batch.step_positives, 1.0)
        return LossOutput(loss, {})


class Unannotated:
    """Leaves its method unannotated: Any, which a type checker accepts for any contract."""

    def __call__(self, batch, logprobs):
        return HalfRFT()(batch, logprobs)


class FloatLoss:
    """Returns a float where the PolicyLoss contract returns a LossOutput."""

    def __call__(self, batch: PolicyBatch, logprobs: torch.Tensor) -> float:
        return 0.0
'''

LENGTH_JUDGE = '''
from __future__ import annotations

from collections.abc import Sequence

from nsa.contracts import StepItem


class LengthJudge:
    """Passes a step of at least ``min_chars`` characters."""

    def __init__(self, threshold: float = 0.5, min_chars: int = 10) -> None:
        self.threshold = threshold
        self.min_chars = min_chars

    def score(self, items: Sequence[StepItem]) -> list[list[float | None]]:
        return [[float(end - start >= self.min_chars) for start, end in item.spans] for item in items]
'''


def make_dist(site: Path, dist: str, package: str, entry_points: str, modules: dict[str, str]) -> None:
    """Write ``package`` and its ``<package>-<version>.dist-info`` into ``site``."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text("")
    for name, source in modules.items():
        (site / package / f"{name}.py").write_text(source)
    name, version = dist.rsplit("-", 1)
    info = site / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip())


def forget(*packages: str) -> None:
    for module in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[module]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """The fake site dir, first on sys.path; ``sys.argv`` kept safe from ``main``."""
    root = tmp_path / "site"
    make_dist(
        root,
        "acme-nsa-1.0",
        "acme_nsa",
        "[nsa.losses]\nHalfRFT = acme_nsa.losses:HalfRFT\nNeedsMore = acme_nsa.needs_more:NeedsMore\n\n"
        "[nsa.judges]\nLengthJudge = acme_nsa.judges:LengthJudge\n",
        {"losses": HALF_RFT, "judges": LENGTH_JUDGE, "needs_more": "import acme_missing_dependency\n"},
    )
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    monkeypatch.setattr(sys, "argv", ["nsa"])  # main() truncates sys.argv in place
    yield root
    forget("acme_nsa", "other_nsa")
    importlib.invalidate_caches()


@pytest.fixture
def recipe(tmp_path, tiny_model):
    path = tiny_recipe(tmp_path, tiny_model)

    def with_loss(class_path: str) -> Path:
        tree = yaml.safe_load(path.read_text())
        tree["model"]["loss"] = {"class_path": class_path}
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return path

    return with_loss


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop whatever fixtures printed
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def printed_loss(out: str) -> str:
    return yaml.safe_load(out)["model"]["loss"]["class_path"]


# -- discovery -------------------------------------------------------------------------


def test_advertised_lists_third_party_beside_builtins(site):
    losses = {p.name: p for p in registry.advertised() if p.group == "nsa.losses"}
    assert {"BCPG", "RFT", "HalfRFT"} <= set(losses)
    half = losses["HalfRFT"]
    assert (half.dist, half.value, half.class_path) == (
        "acme-nsa",
        "acme_nsa.losses:HalfRFT",
        "acme_nsa.losses.HalfRFT",
    )
    assert losses["BCPG"].dist == "nsa"
    assert "acme_nsa" not in sys.modules  # listing imported nothing


def test_advertised_without_the_site_dir_has_no_third_party():
    assert "HalfRFT" not in {p.name for p in registry.advertised()}


@pytest.mark.multiprocess
def test_plugins_command_imports_no_plugin(tmp_path):
    site = tmp_path / "site"
    entry_points = """\
        [nsa.losses]
        HalfRFT = acme_nsa.losses:HalfRFT
        Broken = acme_nsa.broken:Broken
        """
    broken = 'raise ImportError("acme_nsa.broken must never be imported by a listing")\n'
    make_dist(site, "acme-nsa-1.0", "acme_nsa", entry_points, {"losses": HALF_RFT, "broken": broken})
    code = (
        "import sys; from nsa.cli import main; main(['plugins']); "
        "print('PLUGIN' if 'nsa.plugins.losses' in sys.modules else 'NO-PLUGIN'); "
        "print('IMPORTED' if any(m.startswith('acme_nsa') for m in sys.modules) else 'CLEAN')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    rows = {tuple(line.split()) for line in lines}
    assert ("losses", "HalfRFT", "acme_nsa.losses.HalfRFT", "acme-nsa") in rows
    assert ("losses", "Broken", "acme_nsa.broken.Broken", "acme-nsa") in rows
    assert ("losses", "BCPG", "nsa.plugins.losses.bcpg.BCPG", "nsa") in rows
    assert lines[-2:] == ["NO-PLUGIN", "CLEAN"]


# -- resolution ------------------------------------------------------------------------


@pytest.mark.parametrize("class_path", ["HalfRFT", "acme_nsa.losses.HalfRFT"])
def test_recipe_resolves_short_and_full_name(site, recipe, capsys, class_path):
    code, out, err = run_main(capsys, "fit", "--config", str(recipe(class_path)), "--print_config")
    assert code == 0, err
    assert "class_path: acme_nsa.losses.HalfRFT" in out
    assert printed_loss(out) == "acme_nsa.losses.HalfRFT"


@pytest.mark.parametrize(
    "override",
    [["--model.loss=HalfRFT"], ["--model.loss.class_path", "HalfRFT"], ["--model.loss", "HalfRFT"]],
)
def test_command_line_resolves_short_name(site, recipe, capsys, override):
    code, out, err = run_main(capsys, "fit", "--config", str(recipe("RFT")), *override, "--print_config")
    assert code == 0, err
    assert printed_loss(out) == "acme_nsa.losses.HalfRFT"


def test_recipe_short_name_of_builtin(site, recipe, capsys):
    code, out, err = run_main(capsys, "fit", "--config", str(recipe("RFT")), "--print_config")
    assert code == 0, err
    assert printed_loss(out) == "nsa.plugins.losses.rft.RFT"


def test_fit_help_lists_third_party_plugin(site, capsys):
    code, out, err = run_main(capsys, "fit", "--help")
    assert code == 0, err
    flat = " ".join(out.split())  # the help formatter re-wraps the epilog to the terminal width
    assert "plugins (short name or class_path" in flat
    assert "HalfRFT (acme_nsa.losses.HalfRFT)" in flat
    assert "BCPG (nsa.plugins.losses.bcpg.BCPG)" in flat


# -- errors ----------------------------------------------------------------------------


def assert_one_line_error(code: int, err: str, *parts: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nsa: error:"), err
    for part in parts:
        assert part in lines[0], err


def test_misspelt_name_in_recipe(site, recipe, capsys):
    code, _, err = run_main(capsys, "fit", "--config", str(recipe("HalfRTF")), "--print_config")
    assert_one_line_error(code, err, "unknown plugin 'HalfRTF'", "did you mean 'HalfRFT'")


def test_plugin_breaking_the_protocol_fails_in_one_line(site, recipe, capsys):
    path = recipe("acme_nsa.losses.FloatLoss")
    code, _, err = run_main(capsys, "fit", "--config", str(path), "--print_config")
    assert_one_line_error(
        code, err, "model.loss: FloatLoss does not meet the PolicyLoss contract", "FloatLoss.__call__ returns float"
    )
    code, _, err = run_main(capsys, "fit", "--config", str(path), "--model.loss.help", "acme_nsa.losses.FloatLoss")
    assert_one_line_error(code, err, "--model.loss.help: FloatLoss does not meet", "where nsa expects LossOutput")


@pytest.mark.parametrize(
    ("override", "said"),
    [
        (  # a judge in the loss slot, by short name and by class_path
            "--model.loss=LengthJudge",
            "--model.loss: LengthJudge is a StepJudge, not a PolicyLoss: the installed PolicyLoss plugins (nsa.losses) "
            "are BCPG, DPO, GRPOOffline, HalfRFT, NeedsMore, RFT, TOPR",
        ),
        ('--model.loss={"class_path": "acme_nsa.judges.LengthJudge"}', "LengthJudge is a StepJudge, not a PolicyLoss"),
        ("--data.segmenter=Vote", "--data.segmenter: Vote is a Consensus, not a Segmenter: the installed Segmenter"),
        ("--data.judges=[HalfRFT]", "--data.judges: HalfRFT is a PolicyLoss, not a StepJudge"),
        (  # breaks its own kind's contract: which method, and how
            "--model.loss=acme_nsa.losses.FloatLoss",
            "--model.loss: FloatLoss does not meet the PolicyLoss contract (nsa.contracts): FloatLoss.__call__ returns "
            "float, where nsa expects LossOutput",
        ),
        (  # its package imports a module that is not installed
            "--model.loss=NeedsMore",
            "--model.loss: cannot import acme_nsa.needs_more.NeedsMore: the package acme-nsa needs the module "
            "acme_missing_dependency, which is not installed",
        ),
        (  # a class_path with a typo in its module
            "--model.loss=acme_nsa.losess.HalfRFT",
            "--model.loss: cannot import acme_nsa.losess.HalfRFT: there is no module acme_nsa.losess; check the "
            "class_path",
        ),
        ("--model.loss=acme_nsa.losses.HalfRTF", "--model.loss: cannot import acme_nsa.losses.HalfRTF: "),
    ],
)
def test_a_refused_plugin_is_one_nsa_line(site, recipe, capsys, override, said):
    """Every way a named plugin can be wrong gets nsa's words, not jsonargparse's, before anything runs."""
    code, out, err = run_main(capsys, "fit", "--config", str(recipe("RFT")), override, "--print_config")
    assert_one_line_error(code, err, said)
    assert "Parser key" not in err and "either not accessible" not in err and out == ""


def test_unannotated_plugin_is_accepted_as_a_type_checker_would(site, recipe, capsys):
    code, out, err = run_main(capsys, "fit", "--config", str(recipe("acme_nsa.losses.Unannotated")), "--print_config")
    assert code == 0, err
    assert printed_loss(out) == "acme_nsa.losses.Unannotated"


def test_misspelt_name_on_command_line(site, recipe, capsys):
    path = recipe("RFT")
    code, _, err = run_main(capsys, "fit", "--config", str(path), "--model.loss.class_path", "BCPGG", "--print_config")
    assert_one_line_error(code, err, "unknown plugin 'BCPGG'", "did you mean 'BCPG'")


@pytest.fixture
def rival(site):
    """A second distribution claiming the name HalfRFT."""
    make_dist(
        site,
        "other-nsa-2.0",
        "other_nsa",
        "[nsa.losses]\nHalfRFT = other_nsa.losses:HalfRFT\n",
        {"losses": HALF_RFT},
    )
    importlib.invalidate_caches()
    return site


def test_name_claimed_twice_short_name_fails(rival, recipe, capsys):
    code, _, err = run_main(capsys, "fit", "--config", str(recipe("HalfRFT")), "--print_config")
    assert_one_line_error(
        code,
        err,
        "'HalfRFT' is claimed twice",
        "acme_nsa.losses.HalfRFT (from acme-nsa)",
        "other_nsa.losses.HalfRFT (from other-nsa)",
    )


def test_name_claimed_twice_full_path_works(rival, recipe, capsys):
    code, out, err = run_main(capsys, "fit", "--config", str(recipe("other_nsa.losses.HalfRFT")), "--print_config")
    assert code == 0, err
    assert printed_loss(out) == "other_nsa.losses.HalfRFT"


# -- rewrite_args ----------------------------------------------------------------------

SLOTS = {"--model.loss": "nsa.losses", "--data.judges": "nsa.judges"}
PLUGINS = [
    registry.Plugin("nsa.losses", "BCPG", "nsa.plugins.losses.bcpg:BCPG", "nsa"),
    registry.Plugin("nsa.losses", "HalfRFT", "acme_nsa.losses:HalfRFT", "acme-nsa"),
]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["fit", "--model.loss=HalfRFT"], ["fit", "--model.loss=acme_nsa.losses.HalfRFT"]),
        (["fit", "--model.loss", "BCPG"], ["fit", "--model.loss", "nsa.plugins.losses.bcpg.BCPG"]),
        (["--model.loss.class_path", "HalfRFT"], ["--model.loss.class_path", "acme_nsa.losses.HalfRFT"]),
        (["--model.loss.help", "BCPG"], ["--model.loss.help", "nsa.plugins.losses.bcpg.BCPG"]),
        (["--model.loss.init_args.beta", "-0.5"], ["--model.loss.init_args.beta", "-0.5"]),
        (["--model.loss.init_args.beta=-0.5"], ["--model.loss.init_args.beta=-0.5"]),
        (["--model.loss=a.b.C", "--optimizer", "AdamW"], ["--model.loss=a.b.C", "--optimizer", "AdamW"]),
        (["--print_config", "--trainer.max_steps", "3"], ["--print_config", "--trainer.max_steps", "3"]),
        # values outside plugin slots are never taken for plugin names, nor for misspellings
        (["--data.split", "BCPG"], ["--data.split", "BCPG"]),
        (["--trainer.logger.init_args.run_name=HalfRFT1"], ["--trainer.logger.init_args.run_name=HalfRFT1"]),
    ],
)
def test_rewrite_args(argv, expected):
    assert registry.rewrite_args(argv, PLUGINS, SLOTS) == expected


@pytest.mark.parametrize("flag", ["-c", "--config"])
def test_rewrite_args_rewrites_named_recipe(tmp_path, flag):
    short = tmp_path / "short.yaml"
    short.write_text("model:\n  loss:\n    class_path: HalfRFT\n    init_args: {beta: -0.5}\n")
    full = tmp_path / "full.yaml"
    full.write_text("model:\n  loss:\n    class_path: a.b.C\n")
    # a recipe that needs no rewriting is passed on as its path
    assert registry.rewrite_args([flag, str(full)], PLUGINS) == [flag, str(full)]
    out = registry.rewrite_args(["fit", flag, str(short), "--model.loss.init_args.beta", "-1"], PLUGINS)
    assert out[0] == "fit" and out[1] == flag and out[3:] == ["--model.loss.init_args.beta", "-1"]
    assert yaml.safe_load(out[2]) == {
        "model": {"loss": {"class_path": "acme_nsa.losses.HalfRFT", "init_args": {"beta": -0.5}}}
    }
    if flag == "--config":  # the --config=FILE form
        [joined] = registry.rewrite_args([f"--config={short}"], PLUGINS)
        assert joined.startswith("--config=")
        assert yaml.safe_load(joined.removeprefix("--config="))["model"]["loss"]["class_path"] == (
            "acme_nsa.losses.HalfRFT"
        )


def test_rewrite_args_misspelt_and_missing_recipe(tmp_path):
    with pytest.raises(registry.NSAError, match="did you mean 'HalfRFT'"):
        registry.rewrite_args(["--model.loss.class_path", "HalfRTF"], PLUGINS)
    with pytest.raises(registry.NSAError, match="recipe file not found"):
        registry.rewrite_args(["-c", str(tmp_path / "missing.yaml")], PLUGINS)


def test_append_to_a_list_slot():
    out = registry.rewrite_args(["--data.judges+=BCPG"], PLUGINS, {"--data.judges": "nsa.judges"})
    assert out == ["--data.judges+=nsa.plugins.losses.bcpg.BCPG"]


# -- every slot, every way of naming, from every source ----------------------------------

SLOT_PLUGINS = {  # slot: (short name, class_path, init_args) of a plugin it takes; lists take one
    "model.loss": ("HalfRFT", "acme_nsa.losses.HalfRFT", {}),
    "data.sampler": ("HFSampler", "nsa.plugins.samplers.hf_generate.HFSampler", {"max_new_tokens": 7}),
    "data.verifier": ("MathVerifier", "nsa.plugins.verifiers.math_verify.MathVerifier", {"workers": 1}),
    "data.segmenter": ("ParagraphSegmenter", "nsa.plugins.segmenters.paragraph.ParagraphSegmenter", {"min_chars": 3}),
    "data.judges": ("LengthJudge", "acme_nsa.judges.LengthJudge", {"min_chars": 4}),
    "data.consensus": ("Vote", "nsa.plugins.consensus.vote.Vote", {"rule": "any"}),
    "evaluate.benchmarks": ("GSM8K", "nsa.plugins.benchmarks.gsm8k.GSM8K", {"limit": 5}),
    "evaluate.sampler": ("HFSampler", "nsa.plugins.samplers.hf_generate.HFSampler", {"max_new_tokens": 9}),
}
LISTS = {"data.judges", "evaluate.benchmarks"}
WAYS = ("short", "class_path", "short class_path", "mapping")


def named(slot: str, way: str) -> object:
    """The slot's plugin named one way: ``RFT``, ``nsa...RFT``, ``{class_path: RFT}``, with init_args."""
    short, full, init_args = SLOT_PLUGINS[slot]
    value = {
        "short": short,
        "class_path": full,
        "short class_path": {"class_path": short},
        "mapping": {"class_path": short, "init_args": init_args},
    }[way]
    return [value] if slot in LISTS else value


def flag(slot: str, value: object) -> str:
    """The slot on the command line as a user types it: a name bare, a list as [A], a mapping as JSON."""
    if isinstance(value, str) or (isinstance(value, list) and isinstance(value[0], str)):
        return f"--{slot}={value if isinstance(value, str) else '[' + value[0] + ']'}"
    return f"--{slot}={json.dumps(value)}"


def with_slots(tree: dict, way: str) -> dict:
    for slot in SLOT_PLUGINS:
        section, key = slot.split(".")
        tree.setdefault(section, {})[key] = named(slot, way)
    return tree


def assert_resolved(config: dict, way: str) -> None:
    for slot, (_, full, init_args) in SLOT_PLUGINS.items():
        section, key = slot.split(".")
        value = config[section][key]
        [value] = value if slot in LISTS else [value]
        assert value["class_path"] == full, (slot, way, value)
        if way == "mapping":
            assert init_args.items() <= value.get("init_args", {}).items(), (slot, value)


def printed(capsys, *args: str) -> dict:
    code, out, err = run_main(capsys, "fit", *args, "--print_config")
    assert code == 0, err
    return yaml.safe_load(out)


@pytest.mark.parametrize("way", WAYS)
def test_every_slot_takes_every_way_of_naming_from_every_source(site, tmp_path, tiny_model, capsys, way):
    """A recipe file, an overlay file, the command line and a sweep file's overrides each name all
    eight plugin slots (a third-party loss and judge among them) in one way; each resolves to the
    plugin's class_path, with the init_args given (the start recipe names other plugins everywhere)."""
    from nsa import sweep

    base = tiny_recipe(tmp_path, tiny_model)
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump(with_slots(yaml.safe_load(base.read_text()), way), sort_keys=False))
    assert_resolved(printed(capsys, "--config", str(own)), way)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(with_slots({}, way), sort_keys=False))
    assert_resolved(printed(capsys, "--config", str(base), "--config", str(overlay)), way)
    flags = [flag(slot, named(slot, way)) for slot in SLOT_PLUGINS]
    assert_resolved(printed(capsys, "--config", str(base), *flags), way)
    sweep_file = tmp_path / "sweep.yaml"
    cell = {"name": "all", **{slot: named(slot, way) for slot in SLOT_PLUGINS}}
    sweep_file.write_text(yaml.safe_dump({"base": base.name, "cells": [cell]}, sort_keys=False))
    [resolved] = sweep.load(str(sweep_file), []).cells
    assert_resolved(sweep.resolve(resolved), way)
