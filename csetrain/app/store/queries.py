"""Runs read back from the store as plain dicts (`csetrain runs`, sweep resumption), so callers
never touch MLflow objects."""

from __future__ import annotations

from pathlib import Path

from csetrain.app.store.tracker import connect
from csetrain.config import ConfigError, TrackingConfig


def as_dict(run) -> dict:
    """An MLflow run as {id, name, status, start, experiment_id, params, metrics, tags}."""
    info, data = run.info, run.data
    return {
        "id": info.run_id,
        "name": info.run_name,
        "status": info.status,
        "start": info.start_time,
        "experiment_id": info.experiment_id,
        "params": dict(data.params),
        "metrics": dict(data.metrics),
        "tags": dict(data.tags),
    }


def newest(cfg: TrackingConfig, filter_string: str):
    """(client, experiment id, newest run matching the filter or None)."""
    client, experiment_id = connect(cfg)
    found = client.search_runs(
        [experiment_id], filter_string, order_by=["attributes.start_time DESC"], max_results=1
    )
    return client, experiment_id, (found[0] if found else None)


def find_finished_run(cfg: TrackingConfig, wanted_hash: str) -> dict | None:
    """The newest FINISHED run of exactly this config (tag `config_hash`), or None."""
    found = newest(cfg, f"tags.config_hash = '{wanted_hash}' and attributes.status = 'FINISHED'")
    return as_dict(found[2]) if found[2] is not None else None


def read_runs(
    uri: str, experiment: str, filter_string: str = "", max_results: int = 200
) -> list[dict]:
    """Runs of an experiment, newest first."""
    client, experiment_id = connect(TrackingConfig(uri=uri, experiment=experiment))
    runs = client.search_runs(
        [experiment_id],
        filter_string,
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )
    return [as_dict(r) for r in runs]


def quoted(value: str) -> str | None:
    """`value` as an MLflow filter-string literal, or None when it holds both quote kinds (MLflow's
    filter syntax has no escape character)."""
    if "'" not in value:
        return f"'{value}'"
    return f'"{value}"' if '"' not in value else None


def runs_tagged(uri: str, experiment: str, key: str, value: str) -> list[dict]:
    """Runs whose tag `key` is exactly `value` (any characters), newest first."""
    literal = quoted(value)
    if literal is not None:
        return read_runs(uri, experiment, f"tags.`{key}` = {literal}")
    runs = read_runs(uri, experiment, max_results=50000)
    return [r for r in runs if r["tags"].get(key) == value]


def read_run(uri: str, run_id: str) -> dict:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return as_dict(MlflowClient(tracking_uri=uri).get_run(run_id))
    except MlflowException:
        raise ConfigError(
            f"no run '{run_id}' in {uri}: list them with `csetrain runs list --uri {uri}`"
        ) from None


def download_artifact(uri: str, run_id: str, name: str, dst: Path) -> Path | None:
    """One artifact file of a run copied under `dst`, or None if the run has none."""
    from mlflow import MlflowClient

    try:
        return Path(MlflowClient(tracking_uri=uri).download_artifacts(run_id, name, str(dst)))
    except Exception:  # no such artifact, or an artifact store this machine cannot read
        return None
