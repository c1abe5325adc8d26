"""The commands that run: NSACLI (a LightningCLI with nsa's plugin slots) and the commands
built on it. ``nsa.cli`` names them, and imports this module only when one runs: it pulls
in torch and Lightning."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import typing
import warnings
from collections.abc import Callable, Iterator

from jsonargparse import DefaultHelpFormatter, set_dumper
from lightning.pytorch.cli import LightningCLI

from nsa.cli import description, one_line, plugins_epilog
from nsa.conformance import conforms, explain
from nsa.data import NSADataModule
from nsa.errors import NSAError
from nsa.evaluate import Evaluation
from nsa.logprobs import check_chunk_size
from nsa.module import NSAModule
from nsa.registry import CONTRACTS, advertised, rewrite_args, unknown_name_error
from nsa.team import Team
from nsa.tracking import MLflowConfig, StageStats, SystemMetrics, check_reachable, log_stages, system_metrics

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.MLFlowLogger",
        "init_args": {"experiment_name": "nsa", "tracking_uri": "sqlite:///mlflow.db"},
    },
    "use_distributed_sampler": False,  # micro-batches are planned by nsa.batching
    "log_every_n_steps": 1,  # an optimizer step spans many micro-batches: log each
    "reload_dataloaders_every_n_epochs": 1,  # each epoch has its own plan, and its own length
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the plugin list in the epilog kept one group a line."""


def slot_protocols() -> dict[str, type]:
    """``--model.loss``, ``--data.sampler``, ...: the arguments typed by a contract, and its Protocol."""
    slots = {}
    for prefix, cls in (("model", NSAModule), ("data", NSADataModule), ("evaluate", Evaluation)):
        for name, hint in typing.get_type_hints(cls.__init__).items():
            protocol = protocol_in(hint)
            if protocol is not None:
                slots[f"--{prefix}.{name}"] = protocol
    return slots


def slot_groups(protocols: dict[str, type] | None = None) -> dict[str, str]:
    """Each plugin slot's entry-point group, ``--model.loss``: ``nsa.losses``; ``--judge`` is judge-eval's."""
    group_of = {protocol: group for group, protocol in CONTRACTS.items()}
    protocols = slot_protocols() if protocols is None else protocols
    return {slot: group_of[p.__name__] for slot, p in protocols.items()} | {"--judge": "nsa.judges"}


def protocol_in(hint: object) -> type | None:
    """The contract a type names, at any depth (``list[Benchmark] | None``), or None."""
    if getattr(hint, "_is_protocol", False):
        return hint
    return next(filter(None, map(protocol_in, typing.get_args(hint))), None)


@contextlib.contextmanager
def typing_rules() -> Iterator[None]:
    """While nsa parses, a plugin meets its contract as a type checker would judge it
    (``nsa.conformance``), where jsonargparse alone asks for equal annotations."""
    from jsonargparse import _typehints

    exact = _typehints.implements_protocol
    _typehints.implements_protocol = conforms
    try:
        yield
    finally:
        _typehints.implements_protocol = exact


def check_plugin_help(args: list[str], slots: dict[str, type]) -> None:
    """``--model.loss.help X`` shows X's options only if X meets the slot's contract: the same
    verdict, with the same one-line reason, in every slot (jsonargparse's own help check takes
    any class that merely has the method names)."""
    for i, token in enumerate(args):
        key, eq, value = token.partition("=")
        slot = key.removesuffix(".help")
        if slot == key or slot not in slots:
            continue
        value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
        if not value or value.startswith("-"):  # the slot's own help, no plugin named
            continue
        if "." not in value:  # a short name no plugin advertises (rewrite_args resolved the others)
            raise unknown_name_error(value, advertised(), slot_groups(slots)[slot], key)
        problem = explain(value, slots[slot])
        if problem:
            raise NSAError(f"{key}: {problem}")


def loss_pairs(loss: object) -> bool:
    """Whether the loss trains on (correct, incorrect) pairs: its class attribute ``pairs``."""
    import importlib

    class_path = getattr(loss, "class_path", None)
    if class_path is None:  # an instantiated loss
        return bool(getattr(loss, "pairs", False))
    module, _, name = class_path.rpartition(".")
    return bool(getattr(getattr(importlib.import_module(module), name), "pairs", False))


def behaviour_precision(precision: object, strategy: object) -> str:
    """The precision pi_ref's forward must use to match training's numerics.

    Lightning's spelling of ``trainer.precision`` (None means full precision), except that
    FSDP's bf16-mixed casts the parameters themselves to bf16, which is bf16-true for a forward.
    """
    from lightning.fabric.connector import _convert_precision_to_unified_args

    name = "32-true" if precision is None else str(_convert_precision_to_unified_args(precision))
    fsdp = "fsdp" in str(strategy).lower()
    return "bf16-true" if fsdp and name == "bf16-mixed" else name


class NSACLI(LightningCLI):
    """``fit`` only: NSAModule has no validation, test or predict loop."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def __init__(self, args: list[str], run: bool = True, prog: str = "nsa", build: bool = True) -> None:
        # the (rewritten) args go to LightningCLI explicitly; it warns when sys.argv has some too
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        self.build_classes = build  # False: parse and check the recipe only, no seed set and no class built
        quiet_libraries()
        self.plugins = advertised()
        with typing_rules():
            self._build(args, run, prog)

    def _build(self, args: list[str], run: bool, prog: str) -> None:
        super().__init__(
            NSAModule,
            NSADataModule,
            args=args,
            run=run,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_callback=MLflowConfig,
            save_config_kwargs={"save_to_log_dir": False},
            parser_kwargs={
                "exit_on_error": False,
                "formatter_class": HelpFormatter,
                "description": description(),
                "prog": prog,
                "fit": {"exit_on_error": False, "formatter_class": HelpFormatter, "description": description()},
            },
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.policy", "data.policy")
        parser.link_arguments("model.loss", "data.pairs", compute_fn=loss_pairs)
        parser.link_arguments(
            ("trainer.precision", "trainer.strategy"), "data.logprob_precision", compute_fn=behaviour_precision
        )
        parser.add_class_arguments(Evaluation, "evaluate", sub_configs=True)
        parser.epilog = plugins_epilog(self.plugins)

    def _set_seed(self) -> None:
        # a seed set while only parsing would fix the seed (PL_GLOBAL_SEED) of every later fit
        if self.build_classes:
            super()._set_seed()

    def instantiate_classes(self) -> None:
        """Plugins reject bad settings with ValueError; show it as a one-line error. The cache
        folder is checked here too, before any stage runs. Nothing is built when only parsing."""
        if not self.build_classes:
            return
        from nsa.stages.cache import check_writable

        try:
            super().instantiate_classes()
        except NSAError:
            raise
        except ValueError as err:
            raise rejected(str(err)) from None
        check_writable(self.datamodule.recipe.cache_dir)
        check_chunk_size(self.model.hparams.logprob_chunk_tokens, self.datamodule.tokens_per_micro_batch)

    def instantiate_trainer(self, **kwargs):
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # a placement this machine cannot give
            raise NSAError(
                f"trainer: {one_line(str(err))}; every command runs on the recipe's placement: override "
                "--trainer.accelerator, --trainer.devices, --trainer.num_nodes or --trainer.strategy"
            ) from None
        check_reachable(trainer.loggers)  # before any data stage runs
        trainer.callbacks += [StageStats(), SystemMetrics()]
        return trainer


def rejected(message: str) -> NSAError:
    """A value a class refused as it was built. jsonargparse lists why each type of a union
    refused it; the one reason that is no type mismatch is the user's problem."""
    lines = [line.strip().removeprefix("- ").strip() for line in message.splitlines() if line.strip().startswith("- ")]
    reason = next((line.split(". ")[0] for line in lines if not line.startswith("Expected a ")), None)
    uri = re.search(r"tracking_uri='([^']*)'", message)
    if uri and reason:  # MLflow's refusal of the logger's store
        return NSAError(
            f"trainer.logger.init_args.tracking_uri '{uri.group(1)}' is refused by MLflow ({reason}); use "
            "sqlite:///mlflow.db (a local file), http(s)://HOST:PORT (a server) or a database URI"
        )
    return NSAError(f"a recipe value was rejected: {reason or message}")


# inspect and iterate run on one process: their recipe's trainer (8 GPUs x 8 nodes, FSDP) is
# built for its logger only, so it must not ask for devices
ONE_PROCESS = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto"]


def parse_recipe(args: list[str], prog: str = "nsa", one_process: bool = False, build: bool = True) -> NSACLI:
    """The one way a command reads a recipe without training: parsed, checked and every class
    built (``build=False``: none). ``args`` come with their plugin names resolved once, by
    ``with_plugin_names`` (as ``nsa.cli.main`` does for a command; a recipe's YAML, once rewritten,
    is no path to rewrite again). ``one_process``: the trainer is built for its logger only, on
    this process's CPU."""
    return NSACLI(args=[*args, *(ONE_PROCESS if one_process else [])], run=False, prog=prog, build=build)


# jsonargparse serializes a config (paths and types as text, link targets left out) and hands the
# plain dict to a named dumper; this one returns that dict, so nothing is printed and read back
PLAIN = "nsa-plain-dict"
set_dumper(PLAIN, lambda data: data)


def recipe_config(args: list[str]) -> dict:
    """The recipe's resolved config, the mapping ``nsa fit --print_config`` prints, with no class built."""
    cli = parse_recipe(args, build=False)
    return cli.parser.dump(cli.config, format=PLAIN, skip_none=False)


def on_every_process(cli: NSACLI, work: Callable[[Team], None]) -> None:
    """Runs ``work`` on every process of the recipe's placement (``trainer:`` devices and
    nodes), started by the trainer's launcher as ``nsa fit`` would be, or by torchrun or
    SLURM. The processes share each data stage's shards; they leave together."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    from nsa.team import of_trainer

    trainer = cli.trainer

    def launched() -> None:
        trainer.strategy.setup_environment()  # the process group, and this process's device
        team = of_trainer(trainer, cli.datamodule.recipe.shared_cache_dir)
        with team.guard():
            work(team)
            team.leave()

    launcher = trainer.strategy.launcher  # None for one process
    if isinstance(launcher, _MultiProcessingLauncher):  # it would pickle `launched`, a closure
        raise NSAError(
            "trainer.strategy: spawned processes (ddp_spawn, ...) are not supported here; use ddp or fsdp, "
            "whose launcher starts each process as a command"
        )
    if launcher is None:
        launched()
    else:
        launcher.launch(launched, trainer=trainer)


def prepare(args: list[str]) -> None:
    """Run only the data stages of a recipe and print their statistics."""
    cli = parse_recipe(args, "nsa prepare")

    def work(team: Team) -> None:
        with system_metrics(cli.trainer.loggers, team.job_rank == 0):
            cli.datamodule.run_stages(team)
        if team.job_rank == 0:
            print("nsa: data stages", file=sys.stderr)
            cli.datamodule.print_stats()
            for out in cli.datamodule.stages:
                print(f"  {out.name:<10} {out.fingerprint}  {out.path}", file=sys.stderr)
            log_prepared(cli)

    on_every_process(cli, work)


def log_prepared(cli: NSACLI) -> None:
    """``nsa prepare``'s own MLflow run (tag ``nsa.command: prepare``): the stages, their statistics
    and datasets, and the system metrics of the stages it ran."""
    from lightning.pytorch.loggers import MLFlowLogger

    log_stages(cli.trainer.loggers, cli.datamodule)
    for logger in cli.trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            logger.experiment.set_tag(logger.run_id, "nsa.command", "prepare")
            logger.experiment.log_text(logger.run_id, cli.parser.dump(cli.config, skip_none=False), "config.yaml")
            logger.finalize("success")  # no Trainer.fit ends this run: mark it FINISHED, not left RUNNING


def generate(args: list[str]) -> None:
    """Sample and verify answers (cached stages); with ``--output``, write them to a file."""
    from nsa import pipeline
    from nsa.stages.rollouts import check_output, save_rollouts

    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--output")
    known, rest = own.parse_known_args(args)
    if known.output:
        check_output(known.output)  # before any sampling
    cli = parse_recipe(rest, "nsa generate")

    def work(team: Team) -> None:
        outputs = pipeline.generate(cli.datamodule.recipe, team)
        if team.job_rank != 0:
            return
        print("nsa: rollout stages", file=sys.stderr)
        for out in outputs:
            stats = "  ".join(f"{k} {v:g}" for k, v in out.stats.items())
            print(f"  {out.name:<10} {out.fingerprint}  {out.path}\n    {stats}", file=sys.stderr)
        if known.output:
            save_rollouts(outputs[-1].dataset, known.output)
            print(f"nsa: {len(outputs[-1].dataset)} rollouts written to {known.output}", file=sys.stderr)

    on_every_process(cli, work)


def evaluate(args: list[str]) -> None:
    """Benchmark a policy: the recipe's ``evaluate:`` section, printed and logged to MLflow."""
    from nsa import evaluate as ev

    cli = parse_recipe(args, "nsa evaluate")
    evaluation: Evaluation = cli.config_init["evaluate"]
    sampler = evaluation.sampler or cli.datamodule.recipe.sampler
    if sampler is None:
        raise NSAError("no sampler: set evaluate.sampler (or data.sampler)")
    policy = ev.choose_policy(evaluation, cli.model.policy_spec, cli.model.export_dir)

    def work(team: Team) -> None:
        with system_metrics(cli.trainer.loggers, team.job_rank == 0):
            rows = ev.evaluate(evaluation, sampler, policy, cli.datamodule.recipe.cache_dir, team)
        if team.job_rank == 0:
            print(ev.format_table(rows))
            log_evaluation(cli, rows, policy)

    on_every_process(cli, work)


def log_evaluation(cli: NSACLI, rows: list[dict], policy: str) -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    from nsa import evaluate as ev

    for logger in cli.trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            ev.log_results(logger, rows, policy, cli.parser.dump(cli.config, skip_none=False))
            logger.finalize("success")  # no Trainer.fit ends this run: mark it FINISHED, not left RUNNING
            print(f"nsa: results logged to MLflow run {logger.run_id}", file=sys.stderr)


def fit(args: list[str]) -> NSACLI:
    """``nsa fit``: the recipe parsed, built and trained; the one way any command trains."""
    return NSACLI(args=["fit", *args])


def lightning_cli(args: list[str]) -> None:
    """What no nsa command names: LightningCLI's parser says what it expected."""
    NSACLI(args=with_plugin_names(args))


def with_plugin_names(args: list[str]) -> list[str]:
    """The arguments with short plugin names resolved to class paths (in the recipes they name
    too), and a ``--<slot>.help X`` checked against the slot's contract."""
    slots = slot_protocols()
    args = rewrite_args(args, advertised(), slot_groups(slots))
    check_plugin_help(args, slots)
    return args


def quiet_libraries() -> None:
    """nsa draws one progress bar per stage; the libraries' own bars would bury it."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
