"""Runs that continue: an interrupted run resumed from its full-state checkpoint
(`trainer.resume`), and a sweep job skipped because its exact config already finished."""

from __future__ import annotations

from pathlib import Path

from csetrain.app.context import RunContext, RunSummary
from csetrain.checkpoint import Checkpointer, find_resumable
from csetrain.config import ConfigError, Settings


def finished_before(ctx: RunContext, wanted_hash: str) -> RunSummary | None:
    """In a sweep, a job whose exact config already FINISHED is not run again."""
    tracking = ctx.settings.tracking
    if tracking.backend != "mlflow":
        return None
    from csetrain.app.store.queries import find_finished_run

    run = find_finished_run(tracking, wanted_hash)
    if run is None:
        return None
    metrics = run["metrics"]
    return RunSummary(
        metrics.get("eval/best", float("nan")),
        metrics,
        run["id"],
        run["tags"].get("run_dir", ""),
        tracking.uri,
        tracking.experiment,
    )


def resume_target(
    settings: Settings, fresh_dir: Path, wanted_hash: str
) -> tuple[Path, dict | None]:
    """(run dir, saved meta) to continue from, or (fresh dir, None) to start anew."""
    mode = settings.trainer.resume
    if mode == "never":
        return fresh_dir, None
    found = find_resumable(settings.paths.output_dir, wanted_hash) if mode == "auto" else Path(mode)
    if found is None:
        return fresh_dir, None
    meta = Checkpointer(found).meta()
    if meta is None:
        raise ConfigError(
            f"trainer.resume={mode}: {found} has no checkpoints/last/; set a run dir that was interrupted, or auto"
        )
    if meta.get("config_hash") != wanted_hash:
        raise ConfigError(
            f"trainer.resume={mode}: {found} was trained with a different config; resume with its own overrides"
        )
    return found, meta
