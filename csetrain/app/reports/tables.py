"""`csetrain runs list|compare|best`: runs read back from any tracking URI, as terminal tables,
and the paired bootstrap of two runs' per-pair similarities (statistics in csetrain/stats.py).
Reading goes through the run store (app/store, the only MLflow import); this module reads run
dirs and formats."""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

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


def table(rows: list[list], header: list[str]) -> str:
    """A left-aligned text table (rich, plain: no colour, no wrapping), one run or key per line."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in header:
        grid.add_column(name, no_wrap=True)
    for row in rows:
        grid.add_row(*[Text(_fmt(c)) for c in row])  # Text: cells are never read as markup
    out = io.StringIO()
    Console(file=out, width=10_000, color_system=None).print(grid)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


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
    """Among our own FINISHED runs (published reference runs never win)."""
    scored = [
        r
        for r in runs
        if metric in r["metrics"]
        and r["status"] == "FINISHED"
        and r["tags"].get("csetrain.reference") != "true"
    ]
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


def local_run(folder: Path) -> dict:
    """A run dir as the same dict a store gives (params from config.yaml, test metrics from
    eval_results.json), for runs that were never logged to a store."""
    import yaml

    from csetrain.app.store.tracker import flatten

    config_file, results_file = folder / "config.yaml", folder / "eval_results.json"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    test = results.get("test", results)  # train writes {"test": {...}}, eval the test part only
    return {
        "id": str(folder),
        "name": folder.name,
        "status": "LOCAL",
        "start": folder.stat().st_mtime * 1000,
        "experiment_id": None,
        "params": flatten(config or {}),
        "metrics": {f"test/{k}": v for k, v in test.get("metrics", {}).items()},
        "tags": {"run_dir": str(folder.resolve()), **_mteb_tags(results)},
    }


def _mteb_tags(results: dict) -> dict[str, str]:
    """The protocol labels an eval=mteb run dir keeps in eval_results.json (`mteb_summary`)."""
    from csetrain.app.reports.leaderboard import summary_tags

    return summary_tags(results.get("mteb_summary", []))


def pair_scores_for(run: dict, uri: str | None):
    """The run's per-pair similarities: from its run dir, else its MLflow artifact; None if it
    has neither (runs from before they were saved, or eval=mteb, which scores inside mteb)."""
    from csetrain.eval.pair_scores import FILE_NAME, load_pair_scores

    local = Path(run["tags"].get("run_dir", "")) / FILE_NAME
    if local.is_file():
        return load_pair_scores(local)
    if uri is None or run.get("experiment_id") is None:
        return None
    from csetrain.app.store.queries import download_artifact

    with tempfile.TemporaryDirectory() as tmp:
        found = download_artifact(uri, run["id"], FILE_NAME, Path(tmp))
        return load_pair_scores(found) if found else None


def paired_table(a, b, resamples: int = 1000, seed: int = 0) -> str:
    """Paired bootstrap of B − A on every task both runs scored on the same pairs (PairScores)."""
    from csetrain.stats import paired_bootstrap

    if a.protocol != b.protocol:
        return f"paired bootstrap: skipped (A used protocol {a.protocol}, B {b.protocol})"
    tasks = [
        t for t in a.tasks if t in b.tasks and np.array_equal(a.tasks[t].gold, b.tasks[t].gold)
    ]
    if not tasks:
        return "paired bootstrap: skipped (no task was scored on the same pairs in both runs)"
    results = paired_bootstrap(
        {t: a.tasks[t].sims for t in tasks},
        {t: b.tasks[t].sims for t in tasks},
        {t: a.tasks[t].gold for t in tasks},
        resamples,
        seed,
    )
    same_tasks = len(tasks) == len(a.tasks) == len(b.tasks)
    names = {t: a.tasks[t].metric_key for t in tasks}
    names["avg"] = a.avg_key if same_tasks else "avg over the tasks above"
    rows = [
        [names[t], r.a, r.b, r.delta, f"[{r.low:+.2f}, {r.high:+.2f}]", f"{r.p_value:.3f}"]
        for t, r in results.items()
    ]
    title = (
        f"paired bootstrap over test pairs ({resamples} resamples, seed {seed}): Spearman x100, "
        "B-A with its 95% percentile interval and two-sided bootstrap p"
    )
    return title + "\n" + table(rows, ["metric", "A", "B", "B-A", "95% CI", "p"])
