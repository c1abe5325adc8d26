"""Every committed recipe parses and validates here, GPU cluster ones included."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nsa.cli import main

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
ABLATION_FILES = sorted((Path(__file__).parents[1] / "recipes" / "ablations").glob("*.yaml"))
# an overlay is a partial recipe; a sweep file (nsa sweep) names its base recipe
ABLATIONS = [p for p in ABLATION_FILES if "base" not in yaml.safe_load(p.read_text())]
SWEEPS = [p for p in ABLATION_FILES if p not in ABLATIONS]


def resolved(capsys, recipe: Path, *overlays: Path) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), *[f"--config={o}" for o in overlays], "--print_config"])
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None), out
    return yaml.safe_load(out)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_uses_full_class_paths(capsys, recipe):
    config = resolved(capsys, recipe)
    for key in ("sampler", "verifier", "segmenter", "consensus"):
        assert config["data"][key]["class_path"].startswith("nsa.plugins.")
    assert config["model"]["loss"]["class_path"].startswith("nsa.plugins.losses.")
    raw = recipe.read_text()
    assert "class_path: nsa.plugins" in raw  # committed recipes spell plugins in full


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_name_the_answer_budget_max_new_tokens(capsys, recipe):
    """Both samplers call it max_new_tokens: no committed recipe sets VLLMSampler's deprecated max_tokens."""
    config = resolved(capsys, recipe)
    samplers = [config["data"]["sampler"], (config.get("evaluate") or {}).get("sampler")]
    for sampler in filter(None, samplers):
        assert sampler["init_args"].get("max_tokens") is None and sampler["init_args"]["max_new_tokens"] >= 1


def test_math_recipe_is_the_papers_setup(capsys):
    config = resolved(capsys, Path(__file__).parents[1] / "recipes" / "math.yaml")
    assert config["model"]["policy"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"
    assert config["model"]["loss"]["init_args"] == {"beta": 0.5, "tau": 0.001, "per_token_behaviour": False}
    sampler = config["data"]["sampler"]["init_args"]
    assert sampler["num_samples"] == 32 and sampler["temperature"] == 0.7 and sampler["max_new_tokens"] == 22000
    assert config["trainer"]["precision"] == "bf16-mixed" and config["trainer"]["strategy"] == "fsdp"
    assert config["model"]["optimizer"]["init_args"]["lr"] == 5e-7
    assert config["data"]["responses_per_step"] == 512
    judges = [j["class_path"].rsplit(".", 1)[1] for j in config["data"]["judges"]]
    assert judges == ["PRMJudge", "LLMJudge"] and config["data"]["consensus"]["init_args"]["rule"] == "all"
    assert config["data"]["judges"][0]["init_args"]["threshold"] == 0.5  # lambda


def test_math_recipe_switches_to_the_papers_claude_judge_in_one_line(capsys, monkeypatch):
    """The switch its header documents: the LLM judge (the list's last entry) becomes Claude,
    on Anthropic's API by default; the PRM judge is untouched."""
    from nsa.plugins.judges.llm import LLMJudge

    switch = ["--data.judges.init_args.backend=anthropic", "--data.judges.init_args.model=claude-3-7-sonnet-20250219"]
    recipe = Path(__file__).parents[1] / "recipes" / "math.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(recipe), *switch, "--print_config"])
    prm, llm = yaml.safe_load(capsys.readouterr().out)["data"]["judges"]
    assert prm["init_args"]["model"] == "Qwen/Qwen2.5-Math-PRM-7B"
    judge = LLMJudge(**llm["init_args"])
    assert (judge.backend, judge.model, judge.base_url) == (
        "anthropic",
        "claude-3-7-sonnet-20250219",
        "https://api.anthropic.com",
    )
    assert judge._api_key_env == "ANTHROPIC_API_KEY"


TABLE_3 = {
    "bcpg.yaml": ("BCPG", {"beta": 1.0, "tau": 0.001, "per_token_behaviour": False}),
    "rft.yaml": ("RFT", None),
    "dpo.yaml": ("DPO", {"beta": 0.5}),
    "topr.yaml": ("TOPR", {"positive_reward": 1.0, "negative_reward": -1.0}),
    "grpo_offline.yaml": ("GRPOOffline", {"epsilon": 0.2, "kl_coef": 0.0, "eps": 0.0001}),
}


@pytest.mark.parametrize("overlay", ABLATIONS, ids=lambda p: p.name)
def test_each_table_3_row_is_one_overlay_on_the_math_recipe(capsys, overlay):
    """The overlay changes the loss (RFT: also lr 2.5e-6 and 6 epochs) and nothing of the data."""
    math = Path(__file__).parents[1] / "recipes" / "math.yaml"
    base, config = resolved(capsys, math), resolved(capsys, math, overlay)
    name, init_args = TABLE_3[overlay.name]
    assert config["model"]["loss"]["class_path"].rsplit(".", 1)[1] == name
    if init_args is not None:
        assert config["model"]["loss"]["init_args"] == init_args
    assert config["data"] == base["data"]  # linked fields (data.pairs) are not printed
    folders = [cb["init_args"]["dirpath"] for cfg in (base, config) for cb in cfg["trainer"]["callbacks"]]
    assert folders[0] != folders[1] and base["model"]["export_dir"] != config["model"]["export_dir"]
    if name == "RFT":
        assert config["model"]["optimizer"]["init_args"]["lr"] == 2.5e-6 and config["trainer"]["max_epochs"] == 6


def test_every_ablation_file_is_tested():
    assert {p.name for p in ABLATIONS} == set(TABLE_3)
    assert {p.name for p in SWEEPS} == set(SWEEP_CELLS)


def loss_of(config: dict) -> tuple:
    loss = config["model"]["loss"]
    return loss["class_path"].rsplit(".", 1)[1], (loss.get("init_args") or {}).get("beta")


SWEEP_CELLS = {  # cell -> what it must resolve to: (loss, its beta) or the judges that vote
    "table3.yaml": {
        "rft": ("RFT", None),
        "dpo": ("DPO", 0.5),
        "topr": ("TOPR", None),
        "grpo-offline": ("GRPOOffline", None),
        "bcpg": ("BCPG", 1.0),
        "bcpg-nsa": ("BCPG", 0.5),
    },
    "annotators.yaml": {"consensus": ["PRMJudge", "LLMJudge"], "prm-only": ["PRMJudge"], "llm-only": ["LLMJudge"]},
    "beta.yaml": {f"beta={b}": ("BCPG", b) for b in (1.0, 0.5, 0.0, -0.5)},
}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_each_sweep_file_resolves_every_cell_on_the_math_recipe(path):
    """Every cell parses (as `nsa sweep` checks before training), logs to the recipe's MLflow
    experiment, and exports and checkpoints to its own folders."""
    from nsa import sweep

    spec = sweep.load(str(path), [])
    configs = {cell.name: sweep.resolve(cell) for cell in spec.cells}
    assert sweep.tracking(configs) == ("sqlite:///mlflow.db", "nsa-math")
    sweep.check_folders(configs)  # raises when two cells share a folder
    assert len(sweep.export_dirs(configs)) == len(sweep.ckpt_dirs(configs)) == len(configs)
    expected = SWEEP_CELLS[path.name]
    assert list(configs) == list(expected)
    for name, config in configs.items():
        if path.name == "annotators.yaml":
            assert config["data"]["consensus"]["init_args"]["judges"] == expected[name]
        else:
            assert loss_of(config) == expected[name]
    if path.name == "table3.yaml":
        assert configs["rft"]["model"]["optimizer"]["init_args"]["lr"] == 2.5e-6
        assert configs["rft"]["trainer"]["max_epochs"] == 6


@pytest.mark.parametrize(("precision", "expected"), [(None, "32-true"), ("bf16-mixed", "bf16-mixed")])
def test_behaviour_precision_follows_the_trainer(tmp_path, tiny_model, precision, expected):
    """pi_ref's log-probs must come from the training numerics: the link sets them."""
    from nsa.commands import NSACLI
    from tests.recipe import tiny_recipe

    args = ["--config", str(tiny_recipe(tmp_path, tiny_model))]
    if precision:
        args.append(f"--trainer.precision={precision}")
    assert NSACLI(args, run=False).datamodule.recipe.logprob_precision == expected


@pytest.mark.parametrize(
    ("precision", "strategy", "expected"),
    [
        ("bf16-mixed", "fsdp", "bf16-true"),
        ("bf16-mixed", "ddp", "bf16-mixed"),
        (16, "auto", "16-mixed"),
        ("bf16", {"class_path": "lightning.pytorch.strategies.FSDPStrategy"}, "bf16-true"),
        (None, "auto", "32-true"),
    ],
)
def test_fsdp_mixed_precision_computes_pi_ref_in_bf16(precision, strategy, expected):
    """FSDP's bf16-mixed runs the forward on bf16 parameters: pi_ref must too."""
    from nsa.commands import behaviour_precision

    assert behaviour_precision(precision, strategy) == expected
