"""An eval=mteb run as the MTEB leaderboard reads it: each task's main score, the mean per task
type and the mean over tasks, every row with its protocol label.

The numbers are the run's metrics (`test/mteb/<Task>/main_score`, `test/mteb/type/<Type>`,
`test/mteb/avg/main_score`, written by csetrain/eval/mteb_summary.py); the labels are the run's
tags `mteb.protocol.<Task>` and `mteb.type.<Task>` (set by `summary_tags` when the run is logged;
a local run dir reads them from eval_results.json's `mteb_summary`). Used by `csetrain runs
compare` (a table for two runs) and at the end of `csetrain eval` (a bar plot artifact).
"""

from __future__ import annotations

import math
import re

from csetrain.app.reports.plots import _figure
from csetrain.app.reports.tables import table

TASK = re.compile(r"^test/mteb/(?!avg/|type/)([^/]+)/main_score$")
TYPE = re.compile(r"^test/mteb/type/([^/]+)$")
MEAN = "test/mteb/avg/main_score"
FILE_NAME = "plots/mteb_summary.png"


def summary_tags(rows: list[dict]) -> dict[str, str]:
    """Run tags from the evaluator's `details["summary"]` rows, so a stored run keeps its labels."""
    tags = {}
    for row in rows:
        tags[f"mteb.type.{row['task']}"] = row["type"]
        note = "" if row["in_means"] else " (reported, not in the means)"
        tags[f"mteb.protocol.{row['task']}"] = row["protocol"] + note
    return tags


def summary_keys(runs: list[dict]) -> list[tuple[str, str]]:
    """(metric key, row label) in leaderboard order: tasks grouped by type, each type's mean
    after its tasks, the mean over tasks last."""
    metrics = {k for run in runs for k in run["metrics"]}
    tags = {k: v for run in runs for k, v in run.get("tags", {}).items()}
    tasks = sorted(m.group(1) for k in metrics if (m := TASK.match(k)))
    types = sorted(m.group(1) for k in metrics if (m := TYPE.match(k)))
    kind = {t: tags.get(f"mteb.type.{t}", "") for t in tasks}
    rows = []
    for group in [*types, ""]:
        members = [t for t in tasks if kind[t] == group or (not group and kind[t] not in types)]
        rows += [(f"test/mteb/{t}/main_score", t) for t in members]
        if group:
            rows.append((f"test/mteb/type/{group}", f"{group} (mean)"))
    if MEAN in metrics:
        rows.append((MEAN, "mean over tasks"))
    return rows


def _protocol(runs: list[dict], label: str) -> str:
    task = label.removesuffix(" (mean)")
    for run in runs:
        if value := run.get("tags", {}).get(f"mteb.protocol.{task}"):
            return value
    if label.endswith("(mean)") or label == "mean over tasks":
        return "unweighted mean of the main scores above (re-scorings of one dataset excluded)"
    return ""


def leaderboard_table(a: dict, b: dict) -> str:
    """The MTEB summary of two runs side by side, B − A, and each row's protocol."""
    rows = []
    for key, label in summary_keys([a, b]):
        va, vb = a["metrics"].get(key), b["metrics"].get(key)
        diff = vb - va if va is not None and vb is not None else None
        rows.append([label, va, vb, diff, _protocol([a, b], label)])
    header = ["MTEB task (main score x100)", "A", "B", "B-A", "protocol"]
    return "MTEB summary (leaderboard view):\n" + table(rows, header)


def summary_bars(run: dict, title: str = ""):
    """Bars of each task's main score and the type/overall means (grey), x100."""
    rows = summary_keys([run])
    values = [run["metrics"].get(k, math.nan) for k, _ in rows]
    fig, (ax,) = _figure(max(6.0, 0.55 * len(rows) + 2.0), 4.8)
    means = [label.endswith("(mean)") or label == "mean over tasks" for _, label in rows]
    bars = ax.bar(
        range(len(rows)),
        values,
        color=["0.55" if m else "tab:blue" for m in means],
    )
    ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1, rotation=90)
    ax.set_xticks(range(len(rows)), [label for _, label in rows], rotation=60, ha="right")
    ax.tick_params(axis="x", labelsize=7)
    ax.set(ylabel="main score x100", ylim=(0, 105))
    default = "MTEB main scores x100, test splits, mteb's evaluators (grey: unweighted means)"
    ax.set_title(title or default, fontsize=9)
    return fig
