"""Published baselines as reference runs in the store (`csetrain runs baselines`)."""

from __future__ import annotations

from csetrain.app.store.tracker import connect, log_metric_batch
from csetrain.config import TrackingConfig

REFERENCE_TAG = "csetrain.reference"
REFERENCE_KEY_TAG = "csetrain.reference_key"


def write_reference_runs(cfg: TrackingConfig, references: list[dict]) -> list[tuple[str, str]]:
    """Each reference ({key, name, tags, metrics}) as one FINISHED run tagged
    `csetrain.reference=true`, found again by its `csetrain.reference_key` tag: created once,
    later only its changed metrics/tags are written, so running this twice adds nothing.
    Returns (run id, "created" | "updated" | "unchanged") per reference."""
    client, experiment_id = connect(cfg)
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
            log_metric_batch(client, run_id, ref["metrics"])
            client.set_terminated(run_id, "FINISHED")
            outcome.append((run_id, "created"))
            continue
        run_id = run.info.run_id
        metrics = {k: v for k, v in ref["metrics"].items() if run.data.metrics.get(k) != v}
        changed_tags = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
        log_metric_batch(client, run_id, metrics)
        for key, value in changed_tags.items():
            client.set_tag(run_id, key, value)
        outcome.append((run_id, "updated" if metrics or changed_tags else "unchanged"))
    return outcome
