"""Sweeps (`csetrain train -m …`, any Hydra sweeper/launcher) as MLflow parent/child runs.

A Hydra callback opens one parent run per sweep before the first job and summarises it after
the last; each job's run names the parent (tag `mlflow.parentRunId`), found through the
environment (same process) or a file in the sweep directory (remote launchers). The parent is
keyed by the sweep's own overrides, so running the same sweep again reopens it, and jobs whose
exact config already FINISHED are skipped (train.py), which makes a sweep resumable.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from csetrain.config import TrackingConfig, register_resolvers

PARENT_FILE = "mlflow_parent_run_id"


def _tracking(config: DictConfig) -> TrackingConfig | None:
    register_resolvers()
    node = OmegaConf.to_container(config.tracking, resolve=True)
    settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrackingConfig), node))
    return settings if settings.backend == "mlflow" else None


def sweep_key(config: DictConfig) -> str:
    """Identity of a sweep: its config name and command-line overrides, order-free."""
    overrides = sorted(config.hydra.overrides.task)
    return hashlib.sha256(
        json.dumps([config.hydra.job.config_name, overrides]).encode()
    ).hexdigest()[:16]


def parent_run_id(sweep_dir: str | None) -> str | None:
    """The enclosing sweep's parent run, if this job belongs to one."""
    if os.environ.get("CSETRAIN_PARENT_RUN_ID"):
        return os.environ["CSETRAIN_PARENT_RUN_ID"]
    marker = Path(sweep_dir) / PARENT_FILE if sweep_dir else None
    return marker.read_text().strip() if marker and marker.is_file() else None


class MlflowSweep(Callback):
    """Parent run around a multirun (configured in conf/train.yaml `hydra.callbacks`)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from csetrain.tracking import open_parent_run

        tracking = _tracking(config)
        if tracking is None:
            return
        name = "sweep: " + " ".join(config.hydra.overrides.task)
        parent = open_parent_run(
            tracking, name[:250], sweep_key(config), {"sweep_dir": str(config.hydra.sweep.dir)}
        )
        os.environ["CSETRAIN_PARENT_RUN_ID"] = parent
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        (Path(config.hydra.sweep.dir) / PARENT_FILE).write_text(parent)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from csetrain.tracking import close_parent_run

        tracking, parent = _tracking(config), os.environ.pop("CSETRAIN_PARENT_RUN_ID", None)
        if tracking is None or parent is None:
            return
        summary = close_parent_run(tracking, parent)
        print(
            f"sweep: {summary['sweep/finished']} finished, {summary['sweep/failed']} failed "
            f"of {summary['sweep/jobs']} jobs; parent MLflow run {parent}"
        )
