"""The summary of an eval=mteb run as the leaderboard reads it, from mteb's task results (no
mteb import: plain dicts and task metadata in, csetrain metrics out).

Every number mteb returns is kept, ×100, under `mteb/<Task>[.<subset>][.<split>]/<metric>`; a
task's main score (MTEB's mean over its subsets/splits) is also `mteb/<Task>/main_score`; the
means per task type are `mteb/type/<Type>` and the mean over tasks `mteb/avg/main_score`, all
unweighted as on the leaderboard. Each task's row in the summary carries its protocol label.
"""

from __future__ import annotations

import math

import numpy as np

LEADERBOARD = "MTEB(eng, v1)"
# A task that re-scores another task's data with other semantics: reported under its own name,
# left out of the type and overall means when its original is scored too (one vote per dataset).
RESCORES = {"SummEvalSummarization.v2": "SummEval"}
SEMANTICS = {
    "SummEval": "v1 semantics (the leaderboard's: per-article Spearman statistic averaged with "
    "its p-value, mteb#1156)",
    "SummEvalSummarization.v2": "v2 semantics (Spearman statistic only, the corrected score)",
}


def _label(task: str, split: str, subset: str) -> str:
    """`STS12`; other splits/subsets than MTEB's usual `test`/`default` are appended with dots."""
    extra = [s for s, usual in ((subset, "default"), (split, "test")) if s != usual]
    return ".".join([task, *extra])


def _percent(scores: dict) -> dict[str, float]:
    """mteb's finite numeric scores ×100; `main_score` is dropped (a copy of the metric it names)."""
    return {
        k: 100 * float(v)
        for k, v in scores.items()
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and k != "main_score"
        and math.isfinite(v)  # mteb reports `ap` of a multi-class task as NaN
    }


def task_metrics(task_result, main: str) -> dict[str, float]:
    """One task's metrics, ×100. The task's main score, as MTEB's tables aggregate it (the mean
    over its subsets/splits), is `mteb/<Task>/<main>` and `mteb/<Task>/main_score`."""
    name, metrics, mains = task_result.task_name, {}, []
    for split, entries in task_result.scores.items():
        for entry in entries:
            label = _label(name, split, entry["hf_subset"])
            metrics.update({f"mteb/{label}/{k}": v for k, v in _percent(entry).items()})
            mains.append(100 * float(entry["main_score"]))
    metrics.setdefault(f"mteb/{name}/{main}", float(np.mean(mains)))
    metrics[f"mteb/{name}/main_score"] = float(np.mean(mains))
    return metrics


def summary(
    tasks: list, metrics: dict[str, float], version: str, board: set
) -> tuple[dict, list[dict]]:
    """The leaderboard's view: per task-type means and the mean over tasks (keys
    `mteb/type/<Type>`, `mteb/avg/main_score`), and one labelled row per task."""
    names = {t.metadata.name for t in tasks}
    rows, means, by_type = [], {}, {}
    for task in tasks:
        meta = task.metadata
        counted = RESCORES.get(meta.name) not in names
        rows.append(
            {
                "task": meta.name,
                "type": meta.type,
                "main_metric": meta.main_score,
                "main_score": metrics[f"mteb/{meta.name}/main_score"],
                "in_means": counted,
                "protocol": protocol_label(task, version, meta.name in board),
            }
        )
        if counted:
            by_type.setdefault(meta.type, []).append(rows[-1]["main_score"])
    means.update({f"mteb/type/{t}": float(np.mean(v)) for t, v in by_type.items()})
    counted = [r["main_score"] for r in rows if r["in_means"]]
    means["mteb/avg/main_score"] = float(np.mean(counted))
    return means, rows


def protocol_label(task, version: str, on_board: bool) -> str:
    """What a task's number is: metric, splits, subsets, task definition, evaluator."""
    meta = task.metadata
    subsets = ",".join(task.hf_subsets) if meta.is_multilingual else "default"
    label = (
        f"{meta.main_score} x100, split {','.join(task.eval_splits)}, subset {subsets}, "
        f"{LEADERBOARD if on_board else 'mteb default'} task definition, "
        f"mteb {version} {meta.type} evaluator"
    )
    return f"{label}; {SEMANTICS[meta.name]}" if meta.name in SEMANTICS else label
