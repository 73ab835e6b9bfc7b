"""A sweep in the store: one parent run per multirun, its jobs children (tag
`mlflow.parentRunId`), the parent summarised and closed after the last job."""

from __future__ import annotations

from csetrain.app.store.queries import as_dict, newest
from csetrain.app.store.tracker import connect, log_metric_batch
from csetrain.config import TrackingConfig

SWEEP_KIND = "sweep"


def open_parent_run(cfg: TrackingConfig, name: str, sweep_key: str, tags: dict[str, str]) -> str:
    """The sweep's parent run: reopened if this exact sweep ran before (so a re-run's children
    join it), else created."""
    client, experiment_id, found = newest(
        cfg, f"tags.`csetrain.sweep_key` = '{sweep_key}' and tags.`csetrain.kind` = '{SWEEP_KIND}'"
    )
    if found:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    all_tags = {**tags, "csetrain.sweep_key": sweep_key, "csetrain.kind": SWEEP_KIND}
    return client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id


def record_failed_child(cfg: TrackingConfig, parent_id: str, name: str, tags: dict[str, str]):
    """A sweep job refused before it could start its own run, as a FAILED child of the parent."""
    client, experiment_id = connect(cfg)
    run = client.create_run(
        experiment_id, run_name=name, tags={**tags, "mlflow.parentRunId": parent_id}
    )
    client.set_terminated(run.info.run_id, "FAILED")


def child_runs(cfg: TrackingConfig, parent_id: str) -> list[dict]:
    """The runs of a sweep, as plain dicts (store/queries.as_dict)."""
    client, experiment_id = connect(cfg)
    found = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=5000
    )
    return [as_dict(r) for r in found]


def log_to_run(
    cfg: TrackingConfig, run_id: str, metrics: dict[str, float], files=(), artifact_path=None
) -> None:
    """Metrics and files added to an existing run (a sweep's parent)."""
    client, _ = connect(cfg)
    log_metric_batch(client, run_id, metrics)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path)


def close_parent_run(cfg: TrackingConfig, parent_id: str, selection_key: str = "eval/best") -> dict:
    """Summarise the children on the parent (counts, best selection metric) and finish it."""
    client, _ = connect(cfg)
    children = child_runs(cfg, parent_id)
    statuses = [c["status"] for c in children]
    scores = [
        c["metrics"][selection_key]
        for c in children
        if selection_key in c["metrics"] and c["status"] == "FINISHED"
    ]
    summary = {
        "sweep/jobs": len(children),
        "sweep/finished": statuses.count("FINISHED"),
        "sweep/failed": statuses.count("FAILED"),
    }
    if scores:
        summary["sweep/best"] = max(scores)
    log_metric_batch(client, parent_id, summary)
    client.set_terminated(parent_id, "FINISHED" if summary["sweep/failed"] == 0 else "FAILED")
    return summary
