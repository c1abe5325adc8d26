"""MLflow tracking: the resolved config as a run artifact, and the data stages' statistics.

LightningCLI's own SaveConfigCallback writes to the logger's log_dir, which an MLflow
logger with a sqlite or http URI does not have; this one logs the YAML to the run.
"""

from __future__ import annotations

import sys

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
        for logger in trainer.loggers:
            logger.log_hyperparams({f"stage/{name}": fp for name, fp in datamodule.fingerprints.items()})
            logger.log_metrics({f"data/{k}": v for k, v in datamodule.stats.items()}, step=0)


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
