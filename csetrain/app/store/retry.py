"""Calls to a tracking store that is down or flaky: kept in order, retried, spilled to disk.

A failed call never stops training nor loses a metric: it waits in the queue and is retried
(with everything after it, in order) on the next call; `drain` retries with pauses at the end of
a run, and whatever never reached the store is written as JSON lines for `csetrain runs sync`.
Ours rather than tenacity: tenacity retries one call by blocking, and a training step must not
block on a dead store, so retries ride on later calls and only the end of a run waits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def first_line(err: Exception) -> str:
    """An exception's first line (at most 200 characters), or its type when it has no text."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


class PendingCalls:
    """In-order queue of `client.<call>(run_id, *args)` calls that have not yet succeeded."""

    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.calls: list[tuple[str, tuple]] = []
        self.warned = False

    def __len__(self) -> int:
        return len(self.calls)

    def submit(self, call: str, *args) -> None:
        self.calls.append((call, args))
        self.flush()

    def flush(self) -> bool:
        """Send the queue in order until one call fails; True when it is empty."""
        while self.calls:
            call, args = self.calls[0]
            try:
                getattr(self.client, call)(self.run_id, *args)
            except Exception as err:  # network, HTTP 5xx, locked database: all retried later
                if not self.warned:
                    print(
                        f"warning: tracking store unreachable ({first_line(err)}); buffering and retrying"
                    )
                    self.warned = True
                return False
            self.calls.pop(0)
        return True

    def drain(self, pauses: tuple[float, ...]) -> bool:
        """Flush, sleeping each pause between attempts; True when everything reached the store."""
        for pause in pauses:
            if self.flush():
                return True
            time.sleep(pause)
        return self.flush()

    def spill(self, target: Path) -> int:
        """Append the metrics that never reached the store to `target`; returns how many."""
        rows = [
            {"run_id": self.run_id, "key": m.key, "value": m.value, "step": m.step,
             "timestamp": m.timestamp}
            for call, args in self.calls
            if call == "log_batch"
            for m in args[0]
        ]  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        return len(rows)


def sync_spilled(uri: str, path: str | Path) -> int:
    """Replay metrics written by a tracker that lost its store; returns how many were sent."""
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
