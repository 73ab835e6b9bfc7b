"""`csetrain runs list|compare|best`: runs read back from any tracking URI, as terminal tables.
Reading goes through tracking.py (the only MLflow import); this module only formats."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

DEFAULT_METRICS = (
    "eval/start",
    "eval/best",
    "test/senteval/avg/spearman",
    "test/mteb/avg/spearman",
)
CHOICE_KEYS = ("model", "objective", "data", "augmentation", "negative_mining")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else str(value)


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain left-aligned text table."""
    cells = [header, *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def list_table(runs: list[dict], metrics: tuple[str, ...] = DEFAULT_METRICS) -> str:
    shown = [m for m in metrics if any(m in r["metrics"] for r in runs)]
    header = ["run", "status", "started", *CHOICE_KEYS, *shown, "name"]
    rows = [
        [
            r["id"][:8],
            r["status"],
            time.strftime("%m-%d %H:%M", time.localtime(r["start"] / 1000)),
            *[r["tags"].get(f"choice.{k}", "") for k in CHOICE_KEYS],
            *[r["metrics"].get(m) for m in shown],
            r["name"],
        ]
        for r in runs
    ]
    return table(rows, header)


def best_run(runs: list[dict], metric: str) -> dict | None:
    scored = [r for r in runs if metric in r["metrics"] and r["status"] == "FINISHED"]
    return max(scored, key=lambda r: r["metrics"][metric]) if scored else None


def compare_table(a: dict, b: dict) -> str:
    """Params that differ, then every metric of either run with B − A."""
    params = sorted(
        k
        for k in a["params"].keys() | b["params"].keys()
        if a["params"].get(k) != b["params"].get(k)
    )
    lines = [
        f"A = {a['id']} ({a['name']})",
        f"B = {b['id']} ({b['name']})",
        "",
        "config differences:",
    ]
    lines.append(
        table(
            [[k, a["params"].get(k, "—"), b["params"].get(k, "—")] for k in params],
            ["key", "A", "B"],
        )
        if params
        else "  (none)"
    )
    keys = sorted(a["metrics"].keys() | b["metrics"].keys())
    rows = []
    for k in keys:
        va, vb = a["metrics"].get(k), b["metrics"].get(k)
        rows.append([k, va, vb, (vb - va) if va is not None and vb is not None else None])
    lines += ["", "metrics:", table(rows, ["metric", "A", "B", "B-A"])]
    return "\n".join(lines)


def ui_compare_link(ui_url: str, a: dict, b: dict) -> str:
    """The MLflow UI page that shows the same comparison."""
    runs = quote(json.dumps([a["id"], b["id"]]), safe="")
    experiments = quote(json.dumps(sorted({a["experiment_id"], b["experiment_id"]})), safe="")
    return f"{ui_url.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"
