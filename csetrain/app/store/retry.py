"""Calls to a tracking store that is down, flaky or refuses a call: kept in order, retried,
spilled to disk, or dropped when refused.

A call that fails for a transient reason (connection refused, HTTP 5xx, a locked database)
waits in the queue and is retried, with everything after it and in order, on the next call;
`drain` retries with pauses at the end of a run, and whatever never reached the store (metrics,
tags, artifacts, the run's end) is written as JSON lines that `csetrain runs sync` replays.
A call the store *rejects* (an invalid key, a bad request, an artifact that did not arrive
whole) would fail the same way forever: it is dropped with one warning line and recorded in
the spill file, so it never blocks the calls behind it. A run whose artifact was rejected is
ended FAILED, never FINISHED. Ours rather than tenacity: tenacity retries one call by blocking,
and a training step must not block on a dead store, so retries ride on later calls and only
the end of a run waits.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

from csetrain.app.store.artifacts import UPLOADS, StoreCalls
from csetrain.config import ConfigError, CsetrainError


class TrackingError(CsetrainError):
    """The store does not hold a run's end or artifacts: the command must not report success."""


def fail_fast_http() -> None:
    """One quick HTTP retry per call on a dead server (the retry queue retries) instead of
    MLflow's minutes-long retry loop blocking a training step; a user's own setting wins."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def first_line(err: Exception) -> str:
    """An exception's first line (at most 200 characters), or its type when it has no text."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def is_rejected(err: Exception) -> bool:
    """True when retrying cannot help: the store answered and refused (HTTP 4xx but 429), an
    upload was found incomplete, or a local store's disk is full or read-only; False for
    transient failures (network, 5xx, locked database)."""
    from mlflow.exceptions import MlflowException

    if getattr(err, "rejected", False):
        return True
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    if not isinstance(err, MlflowException):
        return False
    status = err.get_http_status_code()
    return 400 <= status < 500 and status not in (408, 429)


class PendingCalls:
    """In-order queue of `<call>(run_id, *args)` calls on the store that have not yet succeeded;
    `rejected` holds the calls the store refused ({call, args, error})."""

    def __init__(self, client, run_id: str) -> None:
        self.store, self.run_id = StoreCalls(client), run_id
        self.calls: list[tuple[str, tuple]] = []
        self.rejected: list[dict] = []
        self.warned = False

    def __len__(self) -> int:
        return len(self.calls)

    def submit(self, call: str, *args) -> None:
        self.calls.append((call, args))
        self.flush()

    def lost_uploads(self) -> list[dict]:
        """The rejected artifact uploads: a run with one of these must not end FINISHED."""
        return [r for r in self.rejected if r["call"] in UPLOADS]

    def flush(self) -> bool:
        """Send the queue in order until a call fails transiently; True when it is empty."""
        while self.calls:
            call, args = self.calls[0]
            if call == "set_terminated" and args[0] == "FINISHED" and self.lost_uploads():
                args = ("FAILED", *args[1:])  # its model or results are not in the store
            try:
                getattr(self.store, call)(self.run_id, *args)
            except Exception as err:
                if is_rejected(err):
                    self._reject(call, args, err)
                    continue
                if not self.warned:
                    print(
                        f"warning: tracking store unreachable ({first_line(err)}); buffering and retrying"
                    )
                    self.warned = True
                return False
            self.calls.pop(0)
        return True

    def _reject(self, call: str, args: tuple, err: Exception) -> None:
        """Drop the head call the store refused, with one warning line, and record it."""
        self.calls.pop(0)
        shown = [a for a in args if isinstance(a, str)][:2]
        self.rejected.append({"call": call, "args": shown, "error": first_line(err)})
        print(f"warning: the tracking store rejected {call} {shown} ({first_line(err)}); dropped")

    def drain(self, pauses: tuple[float, ...]) -> bool:
        """Flush, sleeping each pause between attempts; True when everything reached the store."""
        for pause in pauses:
            if self.flush():
                return True
            time.sleep(pause)
        return self.flush()

    def spill(self, target: Path) -> tuple[int, int]:
        """Append every call that never reached the store, in order, and every rejected call to
        `target`; returns (metrics, other calls) written for replay."""
        rows, metrics = [], 0
        for call, args in self.calls:
            if call == "log_batch":
                rows += [
                    {"run_id": self.run_id, "key": m.key, "value": m.value, "step": m.step,
                     "timestamp": m.timestamp}
                    for m in args[0]
                ]  # fmt: skip
                metrics += len(args[0])
            else:
                rows.append({"run_id": self.run_id, "call": call, "args": list(args)})
        rows += [{"run_id": self.run_id, "rejected": r} for r in self.rejected]
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        return metrics, len(self.calls) - sum(c == "log_batch" for c, _ in self.calls)


def sync_spilled(uri: str, path: str | Path) -> int:
    """Replay what a tracker that lost its store spilled, in order (metrics, tags, artifacts,
    the run's end; rejected calls are skipped); returns how many metrics were sent. Each run's
    replay goes through the same queue as a live run, so a rejected upload still ends it FAILED.
    If the store is still down, the file keeps only what is unsent: no call is sent twice."""
    from mlflow import MlflowClient

    fail_fast_http()
    queues, sent = _read_spill(MlflowClient(tracking_uri=uri), Path(path))
    left = []
    for run_id, queue in queues.items():
        calls = len(queue)
        if not queue.flush():
            left.append(queue)
        elif calls:
            print(f"run {run_id}: {calls} calls replayed")
    if left:
        Path(path).write_text("")
        for queue in left:
            queue.rejected = []
            queue.spill(Path(path))
        raise TrackingError(
            f"the tracking store at {uri} is still unreachable: what is unsent stays in {path}; "
            "retry `csetrain runs sync` later"
        )
    return sent


def _read_spill(client, path: Path) -> tuple[dict[str, PendingCalls], int]:
    """One queue per run of the spilled calls, metrics regrouped in batches of MLflow's
    1,000-metric cap; and how many metrics there are."""
    from mlflow.entities import Metric

    rows = spilled_rows(path)
    queues: dict[str, PendingCalls] = {}
    metrics = 0
    for row in rows:
        queue = queues.setdefault(row["run_id"], PendingCalls(client, row["run_id"]))
        if "rejected" in row:
            continue
        if "call" in row:
            queue.calls.append((row["call"], tuple(row["args"])))
            continue
        metric = Metric(row["key"], row["value"], row["timestamp"], row["step"])
        last = queue.calls[-1] if queue.calls else None
        if last and last[0] == "log_batch" and len(last[1][0]) < 1000:
            last[1][0].append(metric)
        else:
            queue.calls.append(("log_batch", ([metric],)))
        metrics += 1
    return queues, metrics


SPILL_KEYS = (("rejected",), ("call", "args"), ("key", "value", "timestamp", "step"))


def spilled_rows(path: Path) -> list[dict]:
    """Every row of a spill file, all checked before anything is sent: a line that is not JSON,
    or not a row a tracker writes, is one error `FILE:LINE: ...` and nothing is replayed."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {err.start}); nothing was sent") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{where}: not valid JSON ({err.msg}, column {err.colno}): fix or delete that "
                "line; nothing was sent"
            ) from None
        if not (
            isinstance(row, dict)
            and "run_id" in row
            and any(all(k in row for k in keys) for keys in SPILL_KEYS)
        ):
            raise ConfigError(
                f"{where}: not a row a run spills (needs run_id and a metric, call or "
                "rejected entry): fix or delete that line; nothing was sent"
            )
        rows.append(row)
    return rows
