"""MLflow tracking: the resolved config as a run artifact, and the data stages' statistics.

LightningCLI's own SaveConfigCallback writes to the logger's log_dir, which an MLflow
logger with a sqlite or http URI does not have; this one logs the YAML to the run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger


class MLflowConfig(SaveConfigCallback):
    """Logs the fully resolved config as ``config.yaml`` in the MLflow run."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_text(logger.run_id, text, "config.yaml")


class StageStats(L.Callback):
    """Logs each stage's fingerprint and the data statistics (``data/...``) at fit start."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "stats") or not trainer.is_global_zero:
            return  # every process has the stats; one prints and logs them
        print("nsa: data stages", file=sys.stderr)
        datamodule.print_stats()
        log_stages(trainer.loggers, datamodule)


def log_stages(loggers: list, datamodule) -> None:
    """Each stage's fingerprint (``stage/...``), the data statistics (``data/...``) and, for MLflow,
    each stage's dataset as an input of the run."""
    for logger in loggers:
        logger.log_hyperparams({f"stage/{name}": fp for name, fp in datamodule.fingerprints.items()})
        logger.log_metrics({f"data/{k}": v for k, v in datamodule.stats.items()}, step=0)
        if isinstance(logger, MLFlowLogger):
            log_stage_inputs(logger, datamodule.stages)


def log_stage_inputs(logger: MLFlowLogger, stages: list) -> None:
    """Each stage's dataset as an input of the run, the way MLflow records what a run trained on:
    its name, its folder, its digest (the stage's fingerprint, so that two runs on the same data
    show the same digest) and its schema and row count; the training set is the ``training`` one."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset import from_huggingface
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for out in stages:
        with warnings.catch_warnings():  # a local folder resolves as two equal source kinds; either is right
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(out.path))
        dataset = from_huggingface(out.dataset, source=source, name=f"nsa-{out.name}", digest=out.fingerprint)
        context = "training" if out.name == "train" else out.name
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)]))
    logger.experiment.log_inputs(logger.run_id, datasets=inputs)


def monitors(loggers: list) -> list:
    """MLflow's system metrics monitor of each MLflow run (CPU, memory, disk, network and the
    node's GPUs, as ``system/...``), started: on by default; ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
    =false`` turns them off, ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` sets the seconds between
    samples (10). MLflow logs a sample at the end of each interval: a shorter command logs none."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() == "false":
        return []
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "10"))
    started = []
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            uri = logger._tracking_uri
            monitor = SystemMetricsMonitor(logger.run_id, sampling_interval=interval, tracking_uri=uri)
            monitor.start()
            started.append(monitor)
    return started


@contextlib.contextmanager
def system_metrics(loggers: list, lead: bool) -> Iterator[None]:
    """The system metrics of a command that is no ``fit`` (prepare, evaluate), sampled by the
    leading process while the block runs."""
    running = monitors(loggers) if lead else []
    try:
        yield
    finally:
        for monitor in running:
            monitor.finish()


class SystemMetrics(L.Callback):
    """``fit``'s system metrics (see ``monitors``), sampled by the first process on its node."""

    def __init__(self) -> None:
        self._running: list = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._running = monitors(trainer.loggers)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for monitor in self._running:
            monitor.finish()  # logs what it sampled last
        self._running = []


def check_reachable(loggers: list) -> None:
    """A tracking server that cannot be reached fails here, in one line, before any stage runs.

    MLflow's client retries for minutes and Lightning creates the run only when training starts,
    so without this check an unreachable server would surface after hours of sampling.
    """
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            check_server(logger._tracking_uri)


def check_server(uri: str | None) -> None:
    """One-line error unless the MLflow server at ``uri`` answers; a local store needs no server."""
    import urllib.error
    import urllib.request

    from nsa.errors import NSAError

    if not uri or not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as reply:
            reply.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise NSAError(
            f"MLflow server {uri} is unreachable ({reason}); start it, or set "
            "trainer.logger.init_args.tracking_uri to a local store such as sqlite:///mlflow.db"
        ) from None


# --- MLflow runs: a command's parent run and its child runs -------------------------------------
# (MLflow's own tag mlflow.parentRunId makes a run a child: its UI nests the run under the parent)

PARENT = "mlflow.parentRunId"


def experiment_id(client, name: str) -> str:
    """The id of the MLflow experiment ``name``, created when there is none."""
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def latest_run(client, experiment: str, tags: dict[str, str], parent: str | None = None):
    """The latest run with these tags (and this parent), or None. Tag values may hold no quote."""
    tags = {PARENT: parent, **tags} if parent else tags
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    found = client.search_runs([experiment], query, max_results=1, order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def child_runs(client, experiment: str, parent: str) -> list:
    """Every child run of ``parent``, oldest first."""
    children = client.search_runs([experiment], f"tags.`{PARENT}` = '{parent}'", max_results=10000)
    return sorted(children, key=lambda run: run.info.start_time)


def new_run(client, experiment: str, name: str, tags: dict[str, str], parent: str | None = None):
    """A new run named ``name`` with these tags, a child of ``parent`` when one is given."""
    tags = {PARENT: parent, **tags} if parent else tags
    return client.create_run(experiment, run_name=name, tags=tags)
