"""The tracker a run logs through: MLflow (the run store's client API) or nothing.

A Tracker is created (and its run named) before any seeding, so fixed seeds never produce
identical random run names; calls that fail wait in a retry queue (store/retry.py).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Protocol

from csetrain.app.store.retry import PendingCalls, TrackingError, fail_fast_http, first_line
from csetrain.config import ConfigError, TrackingConfig

MAX_PARAM_LEN = 6000
_NOT_IN_KEYS = re.compile(r"[^/\w.\- ]")  # MLflow keys: alphanumerics, _ . - space and /


def store_key(key: str) -> str:
    """A tag or param key as MLflow accepts it, the same for new and resumed runs: Hydra's
    package marker '@' becomes '/' (`choice.eval@dev_eval` -> `choice.eval/dev_eval`), any
    other character MLflow refuses becomes '_'. Code that reads such a tag back looks it up by
    `store_key(name)` (the run tables read only keys this leaves unchanged)."""
    return _NOT_IN_KEYS.sub("_", key.replace("@", "/"))


class _AtDebug(logging.Filter):
    """Log records demoted to DEBUG, kept only where debug logging is on: HTTP retry chatter
    (urllib3) about a store that is down stays out of the console; the retry queue prints the
    one summary line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).getEffectiveLevel() <= logging.DEBUG


def quiet_http_retries() -> None:
    """Demote urllib3's per-attempt warnings ("Retrying ... after connection broken") to debug."""
    for name in ("urllib3.connectionpool", "urllib3.util.retry", "urllib3"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _AtDebug) for f in logger.filters):
            logger.addFilter(_AtDebug())


@contextlib.contextmanager
def _store_lock(db: Path | None):
    """Held while connecting to a SQLite store: the first connection creates and migrates its
    tables, and two runs doing that at once would collide (`table ... already exists`)."""
    if db is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): connect unguarded
        yield
        return
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None: ...
    def log_artifact(self, local_file: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def finish(self, status: str = "FINISHED") -> str | None: ...


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


def connect(cfg: TrackingConfig):
    """(client, experiment id) for the store and experiment of `cfg`; the experiment is created on
    first use, its artifacts next to a SQLite store (outputs/mlartifacts) rather than in
    whatever the working directory is."""
    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO chatter on every run
    quiet_http_retries()
    fail_fast_http()
    location, db = cfg.artifact_location, None
    if cfg.uri.startswith("sqlite:///"):
        db = Path(cfg.uri.removeprefix("sqlite:///")).expanduser()
        db.parent.mkdir(parents=True, exist_ok=True)
        check_sqlite_file(db)
        location = location or (db.resolve().parent / "mlartifacts").as_uri()
    with _store_lock(db):
        client = MlflowClient(tracking_uri=cfg.uri)
        return client, _experiment_id(client, cfg.experiment, location)


def check_sqlite_file(db: Path) -> None:
    """An existing store file that is not SQLite (garbage, a truncated copy) is one line naming
    it, instead of SQLAlchemy's traceback; an empty or missing file is a new store."""
    try:
        with db.open("rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return
    except OSError as err:
        raise ConfigError(f"cannot read the MLflow store {db} ({err.strerror})") from None
    if head and head != b"SQLite format 3\x00":
        raise ConfigError(
            f"{db} is not an SQLite database (corrupt or not an MLflow store): "
            "point the tracking URI at an MLflow store, or move the file away to start a new one"
        )


def _experiment_id(client, name: str, location: str | None) -> str:
    """The experiment's id, created on first use; one another run created meanwhile is reused."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        if (experiment := client.get_experiment_by_name(name)) is None:
            raise
        return experiment.experiment_id


def log_metric_batch(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Metrics logged directly (no retry queue), in batches of MLflow's 1,000-metric cap."""
    for batch in metric_batches(metrics, step):
        client.log_batch(run_id, metrics=batch)


def metric_batches(metrics: dict[str, float], step: int) -> list[list]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    return [items[start : start + 1000] for start in range(0, len(items), 1000)]


class MlflowTracker:
    """One MLflow run through the client API (no global fluent state, so sweeps in one process
    never write into each other's runs). Every call goes through a retry queue; what never
    reaches the store is spilled to `spill_path` (JSON lines) at `finish`. Tag and param keys
    pass through `store_key`, so a new and a resumed run write the same keys."""

    spill_path: Path | None = None

    def __init__(
        self,
        cfg: TrackingConfig,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, str],
        resume_run_id: str | None = None,
    ) -> None:
        from mlflow.entities import Param

        self.client, self.experiment_id = connect(cfg)
        self.uri = cfg.uri
        if resume_run_id:  # a resumed run continues in its own MLflow run
            self.run_id = resume_run_id
            self._pending = PendingCalls(self.client, self.run_id)
            self.client.update_run(resume_run_id, status="RUNNING")
            self.set_tags({**tags, "resumed": "true"})
            return
        tags = {store_key(k): str(v) for k, v in tags.items()}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self._pending = PendingCalls(self.client, self.run_id)
        items = [Param(store_key(k), v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for batch in metric_batches(metrics, step):
            self._pending.submit("log_batch", batch)

    def log_artifacts(self, local_dir, artifact_path=None):
        self._pending.submit("log_artifacts", str(Path(local_dir).resolve()), artifact_path)

    def log_artifact(self, local_file, artifact_path=None):
        self._pending.submit("log_artifact", str(Path(local_file).resolve()), artifact_path)

    def set_tags(self, tags):
        for k, v in tags.items():
            self._pending.submit("set_tag", store_key(k), str(v))

    def finish(
        self, status="FINISHED", retries: tuple[float, ...] = (1, 2, 4, 8, 15)
    ) -> str | None:
        """End the run, confirmed against the store; `retries` are the pauses (s) between the
        last attempts to reach it. None when the store holds the run's end and every artifact
        whole, else one line saying what is missing (the local copies stay in the run dir)."""
        self._pending.submit("set_terminated", status)
        drained = self._pending.drain(retries)
        target = self.spill_path or Path(f"unsynced-{self.run_id}.jsonl")
        if not drained or self._pending.rejected:
            metrics, calls = self._pending.spill(target)
        if not drained:
            return (
                f"run {self.run_id} did not reach the tracking store: {metrics} metrics and "
                f"{calls} other calls (its end, tags, artifacts) saved to {target}; replay with "
                f"`csetrain runs sync {target} --uri {self.uri}`"
            )
        if lost := self._pending.lost_uploads():
            return (
                f"the tracking store did not keep {lost[0]['args'][0]} ({lost[0]['error']}); "
                f"MLflow run {self.run_id} ended FAILED, the local copy is kept"
            )
        return None


def end_run(tracker: Tracker, status: str, run_dir: Path) -> None:
    """Finish the tracker's run; a run that succeeded but whose end or artifacts the store does
    not hold fails the command (TrackingError), a run that already failed only warns, so its
    own error is the one raised."""
    problem = tracker.finish(status)
    if problem and status == "FINISHED":
        raise TrackingError(f"{problem}; results are in {run_dir}")
    if problem:
        print(f"warning: {problem}")


def make_tracker(
    cfg: TrackingConfig,
    run_name: str,
    tags: dict[str, str],
    config: dict,
    resume_run_id: str | None = None,
) -> Tracker:
    """The run's tracker; `config` (plain, resolved) is logged as flattened params."""
    if cfg.backend == "none":
        return NullTracker()
    try:
        return MlflowTracker(cfg, run_name, tags, flatten(config), resume_run_id)
    except Exception as err:  # unreachable or broken store at start: say so before any work
        raise ConfigError(
            f"tracking.uri={cfg.uri} is unreachable ({first_line(err)}): start the server, fix the URI, or use tracking=none"
        ) from None
