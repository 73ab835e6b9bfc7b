"""Experiment tracking: the one home of MLflow. A Tracker is created (and its run named) before
any seeding, so fixed seeds never produce identical random run names (LHT #613)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig, OmegaConf

from csetrain.config import TrackingConfig

MAX_PARAM_LEN = 6000


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None: ...
    def log_artifact(self, local_file: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """`tracking=none` and non-zero DDP ranks: same methods, no effects."""

    run_id = None

    def log_metrics(self, metrics, step):
        pass

    def log_artifacts(self, local_dir, artifact_path=None):
        pass

    def log_artifact(self, local_file, artifact_path=None):
        pass

    def set_tags(self, tags):
        pass

    def finish(self, status="FINISHED"):
        pass


def flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {'a.b.c': 'value'} for MLflow params."""
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LEN]
    return out


def git_info() -> dict[str, str]:
    """git sha and dirty flag of the working directory's repository, if any."""

    def run(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)

    try:
        sha = run("rev-parse", "HEAD")
        if sha.returncode != 0:
            return {}
        dirty = bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"git.sha": sha.stdout.strip(), "git.dirty": str(dirty).lower()}
    except (OSError, subprocess.TimeoutExpired):
        return {}


class MlflowTracker:
    """One MLflow run through the client API (no global fluent state, so sweeps in one process
    never write into each other's runs)."""

    def __init__(
        self,
        cfg: TrackingConfig,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, str],
        resume_run_id: str | None = None,
    ) -> None:
        from mlflow.entities import Param

        self._connect(cfg)
        if resume_run_id:  # a resumed run continues in its own MLflow run
            self.run_id = resume_run_id
            self.client.update_run(resume_run_id, status="RUNNING")
            self.set_tags({**tags, "resumed": "true"})
            return
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def _connect(self, cfg: TrackingConfig) -> None:
        """Client for the store, and the experiment (created on first use)."""
        import logging

        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO chatter on every run
        # Fail fast on a dead server (we buffer and retry ourselves) instead of MLflow's
        # minutes-long HTTP retry loop blocking the training step.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        if cfg.uri.startswith("sqlite:///"):
            Path(cfg.uri.removeprefix("sqlite:///")).expanduser().parent.mkdir(
                parents=True, exist_ok=True
            )
        self.client = MlflowClient(tracking_uri=cfg.uri)
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            location = cfg.artifact_location or self._default_artifacts(cfg.uri)
            self.experiment_id = self.client.create_experiment(
                cfg.experiment, artifact_location=location
            )
        else:
            self.experiment_id = experiment.experiment_id

    @staticmethod
    def _default_artifacts(uri: str) -> str | None:
        # Next to a SQLite store (outputs/mlartifacts), not in whatever the working directory is.
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
            return (db.parent / "mlartifacts").as_uri()
        return None

    # A store that is down or flaky must not stop training nor lose a metric: calls that fail are
    # kept in order and retried on the next call and at the end; whatever never reached the
    # store is written to `spill_path` (JSON lines) for `csetrain runs sync`.
    spill_path: Path | None = None
    _pending: list | None = None
    _warned = False

    def _attempt(self, call, *args) -> None:
        self._pending = self._pending or []
        self._pending.append((call, args))
        self._flush()

    def _flush(self) -> bool:
        while self._pending:
            call, args = self._pending[0]
            try:
                getattr(self.client, call)(self.run_id, *args)
            except Exception as err:  # network, HTTP 5xx, locked database: all retried later
                if not self._warned:
                    first = (
                        str(err).strip().splitlines()[0][:200]
                        if str(err).strip()
                        else type(err).__name__
                    )
                    print(f"warning: tracking store unreachable ({first}); buffering and retrying")
                    self._warned = True
                return False
            self._pending.pop(0)
        return True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self._attempt("log_batch", items[start : start + 1000])

    def log_artifacts(self, local_dir, artifact_path=None):
        self._attempt("log_artifacts", str(local_dir), artifact_path)

    def log_artifact(self, local_file, artifact_path=None):
        self._attempt("log_artifact", str(local_file), artifact_path)

    def set_tags(self, tags):
        for k, v in tags.items():
            self._attempt("set_tag", k, str(v))

    def finish(self, status="FINISHED", retries: tuple[float, ...] = (1, 2, 4, 8, 15)):
        import time

        self._attempt("set_terminated", status)
        for delay in retries:
            if self._flush():
                return
            time.sleep(delay)
        if not self._flush():
            self._spill()

    def _spill(self) -> None:
        """Write what never reached the store, so nothing is lost."""
        import json

        rows = []
        for call, args in self._pending:
            if call == "log_batch":
                rows += [
                    {
                        "run_id": self.run_id,
                        "key": m.key,
                        "value": m.value,
                        "step": m.step,
                        "timestamp": m.timestamp,
                    }
                    for m in args[0]
                ]
        target = self.spill_path or Path(f"unsynced-{self.run_id}.jsonl")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(
            f"warning: {len(rows)} metrics could not reach the tracking store; saved to {target} "
            f"(replay with `csetrain runs sync {target} --uri URI`)"
        )


def sync_spilled(uri: str, path: str | Path) -> int:
    """Replay metrics written by a tracker that lost its store; returns how many were sent."""
    import json

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by_run: dict[str, list] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(
            Metric(r["key"], r["value"], r["timestamp"], r["step"])
        )
    for run_id, metrics in by_run.items():
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
    return len(rows)


def make_tracker(
    cfg: TrackingConfig,
    run_name: str,
    tags: dict[str, str],
    config: DictConfig,
    resume_run_id: str | None = None,
) -> Tracker:
    if cfg.backend == "none":
        return NullTracker()
    params = flatten(OmegaConf.to_container(config, resolve=True))
    try:
        return MlflowTracker(cfg, run_name, tags, params, resume_run_id)
    except Exception as err:  # unreachable or broken store at start: say so before any work
        from csetrain.config import ConfigError

        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"tracking.uri={cfg.uri} is unreachable ({first}): start the server, fix the URI, or use tracking=none"
        ) from None


# --- sweeps: a parent run per multirun, one child per job, finished jobs found by config hash ---

PARENT_ENV = "CSETRAIN_PARENT_RUN_ID"
SWEEP_KIND = "sweep"


def _client_and_experiment(cfg: TrackingConfig):
    connection = MlflowTracker.__new__(MlflowTracker)  # the store/experiment set-up, no run
    connection._connect(cfg)
    return connection.client, connection.experiment_id


def _newest(cfg: TrackingConfig, filter_string: str):
    """(client, experiment id, newest run matching the filter or None)."""
    client, experiment_id = _client_and_experiment(cfg)
    found = client.search_runs(
        [experiment_id], filter_string, order_by=["attributes.start_time DESC"], max_results=1
    )
    return client, experiment_id, (found[0] if found else None)


def open_parent_run(cfg: TrackingConfig, name: str, sweep_key: str, tags: dict[str, str]) -> str:
    """The sweep's parent run: reopened if this exact sweep ran before (so a re-run's children
    join it), else created."""
    client, experiment_id, found = _newest(
        cfg, f"tags.`csetrain.sweep_key` = '{sweep_key}' and tags.`csetrain.kind` = '{SWEEP_KIND}'"
    )
    if found:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    all_tags = {**tags, "csetrain.sweep_key": sweep_key, "csetrain.kind": SWEEP_KIND}
    return client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id


def child_runs(cfg: TrackingConfig, parent_id: str) -> list[dict]:
    """The runs of a sweep (tag `mlflow.parentRunId`), as plain dicts (see `_as_dict`)."""
    client, experiment_id = _client_and_experiment(cfg)
    found = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=5000
    )
    return [_as_dict(r) for r in found]


def _log_batch(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for start in range(0, len(items), 1000):  # MLflow caps a batch at 1,000 metrics
        client.log_batch(run_id, metrics=items[start : start + 1000])


def log_to_run(
    cfg: TrackingConfig, run_id: str, metrics: dict[str, float], files=(), artifact_path=None
) -> None:
    """Metrics and files added to an existing run (a sweep's parent)."""
    client, _ = _client_and_experiment(cfg)
    _log_batch(client, run_id, metrics)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path)


def download_artifact(uri: str, run_id: str, name: str, dst: Path) -> Path | None:
    """One artifact file of a run copied under `dst`, or None if the run has none."""
    from mlflow import MlflowClient

    try:
        return Path(MlflowClient(tracking_uri=uri).download_artifacts(run_id, name, str(dst)))
    except Exception:  # no such artifact, or an artifact store this machine cannot read
        return None


def close_parent_run(cfg: TrackingConfig, parent_id: str, selection_key: str = "eval/best") -> dict:
    """Summarise the children on the parent (counts, best selection metric) and finish it."""
    client, _ = _client_and_experiment(cfg)
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
    _log_batch(client, parent_id, summary)
    client.set_terminated(parent_id, "FINISHED" if summary["sweep/failed"] == 0 else "FAILED")
    return summary


def find_finished_run(cfg: TrackingConfig, wanted_hash: str):
    """A FINISHED run of exactly this config (tag `config_hash`), newest first, or None."""
    return _newest(cfg, f"tags.config_hash = '{wanted_hash}' and attributes.status = 'FINISHED'")[2]


# --- published baselines as reference runs (csetrain runs baselines) ---

REFERENCE_TAG = "csetrain.reference"
REFERENCE_KEY_TAG = "csetrain.reference_key"


def write_reference_runs(cfg: TrackingConfig, references: list[dict]) -> list[tuple[str, str]]:
    """Each reference ({key, name, tags, metrics}) as one FINISHED run tagged
    `csetrain.reference=true`, found again by its `csetrain.reference_key` tag: created once,
    later only its changed metrics/tags are written, so running this twice adds nothing.
    Returns (run id, "created" | "updated" | "unchanged") per reference."""
    client, experiment_id = _client_and_experiment(cfg)
    existing = {
        r.data.tags.get(REFERENCE_KEY_TAG): r
        for r in client.search_runs(
            [experiment_id], f"tags.`{REFERENCE_TAG}` = 'true'", max_results=5000
        )
    }
    outcome = []
    for ref in references:
        tags = {**ref["tags"], REFERENCE_TAG: "true", REFERENCE_KEY_TAG: ref["key"]}
        run = existing.get(ref["key"])
        if run is None:
            run_id = client.create_run(experiment_id, run_name=ref["name"], tags=tags).info.run_id
            _log_batch(client, run_id, ref["metrics"])
            client.set_terminated(run_id, "FINISHED")
            outcome.append((run_id, "created"))
            continue
        run_id = run.info.run_id
        metrics = {k: v for k, v in ref["metrics"].items() if run.data.metrics.get(k) != v}
        changed_tags = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
        _log_batch(client, run_id, metrics)
        for key, value in changed_tags.items():
            client.set_tag(run_id, key, value)
        outcome.append((run_id, "updated" if metrics or changed_tags else "unchanged"))
    return outcome


# --- reading runs back (csetrain runs list|compare|best) ---


def _as_dict(run) -> dict:
    """An MLflow run as a plain dict, so callers never touch MLflow objects."""
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


def read_runs(
    uri: str, experiment: str, filter_string: str = "", max_results: int = 200
) -> list[dict]:
    """Runs of an experiment, newest first, as plain dicts (see `_as_dict`)."""
    client, experiment_id = _client_and_experiment(TrackingConfig(uri=uri, experiment=experiment))
    runs = client.search_runs(
        [experiment_id],
        filter_string,
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )
    return [_as_dict(r) for r in runs]


def read_run(uri: str, run_id: str) -> dict:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return _as_dict(MlflowClient(tracking_uri=uri).get_run(run_id))
    except MlflowException:
        from csetrain.config import ConfigError

        raise ConfigError(
            f"no run '{run_id}' in {uri}: list them with `csetrain runs list --uri {uri}`"
        ) from None
