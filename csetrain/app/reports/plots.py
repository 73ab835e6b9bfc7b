"""The plots of a training run, written to `<run dir>/plots/*.png` and logged as MLflow artifacts.

- `training_curves`: train loss and learning rate (log cadence) and the dev selection metric
  (every dev evaluation) over steps;
- `sts_bars`: the final test number of each task beside the start checkpoint's, and any
  published `references` (reports/baselines.py) under the same metric keys (protocol included,
  so a SentEval row is never set against an MTEB number);
- `alignment_uniformity`: the dev diagnostics at each evaluation as a path in the
  (uniformity, alignment) plane, as SimCSE's Figure 2 (arXiv 2104.08821) draws it.
(A layer x dimension grid draws its own heatmap: csetrain/eval/grid.py.)

Figures come from matplotlib's object API (`Figure`, rendered by its Agg canvas): no pyplot
state, no display needed. Every function returns the Figure so tests can read back what was
drawn. Plots are a report: `never_fail` turns any error into a warning, so a plot can never fail
a run that trained and tested.

The training curves read `metrics.jsonl` in the run dir, written by `MetricLog` as the loop logs
(it works with `tracking=none` and survives a resume); the start checkpoint's scores come from
`score_start` (cached on disk by weights fingerprint + eval config).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

from csetrain.checkpoint import write_text_atomic

log = logging.getLogger(__name__)

START_FILE = "initial_eval.json"  # the start checkpoint's test metrics, in the run dir
METRIC_LOG = "metrics.jsonl"
MAIN_METRICS = ("spearman_all", "spearman", "cosine_spearman")  # one headline number per task


def never_fail(what: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), or None with a warning if it raises: reports never fail a run."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure of a report is only worth a warning
        log.warning(
            "%s failed (the run itself is unaffected): %s: %s", what, type(err).__name__, err
        )
        return None


# ---------------------------------------------------------------------------------------------
# Where the data comes from.


class MetricLog:
    """A tracker that also appends every `log_metrics` call to a JSONL file; everything else
    goes to the wrapped tracker."""

    def __init__(self, tracker, path: Path) -> None:
        self.tracker, self.path = tracker, Path(path)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log_metrics(metrics, step)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def __getattr__(self, name: str):
        return getattr(self.tracker, name)


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; the last value logged at a step wins (a resumed run
    re-logs the steps after its last saved state)."""
    by_step = {row["step"]: row[key] for row in rows if key in row}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def read_metric_log(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def score_start(eval_cfg, encoder, run_dir: Path, cache_dir: Path) -> dict[str, float] | None:
    """Test metrics of the start checkpoint (`eval.compare_initial`), written to the run dir.

    Cached under `cache_dir/initial_eval/` by the encoder's fingerprint (weights + inference
    settings, csetrain/eval/mteb.py) and the resolved eval config, so runs from the same start
    (seeds, learning rates) score it once; two different start models never share an entry.
    """
    from csetrain.app.settings import instantiate, plain
    from csetrain.eval.mteb_encoder import fingerprint

    if not eval_cfg.get("compare_initial", False):
        return None
    config = plain(eval_cfg)
    config = {k: v for k, v in config.items() if k not in ("batch_size", "progress")}
    key = hashlib.sha256(json.dumps([fingerprint(encoder), config], sort_keys=True).encode())
    cached = Path(cache_dir) / "initial_eval" / f"{key.hexdigest()[:32]}.json"
    if cached.is_file():
        metrics = json.loads(cached.read_text())["metrics"]
    else:
        metrics = instantiate(eval_cfg)(encoder).prefixed("test")
        write_text_atomic(cached, json.dumps({"metrics": metrics, "eval": config}, indent=2))
    write_text_atomic(Path(run_dir) / START_FILE, json.dumps({"metrics": metrics}, indent=2))
    return metrics


# ---------------------------------------------------------------------------------------------
# The figures.


def _figure(width: float, height: float, panels: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def save_figure(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path


def training_curves(metric_rows: list[dict], history: list[dict], dev_label: str):
    """Three panels over steps: train loss, learning rate, dev selection metric (`primary`)."""
    fig, (loss_ax, lr_ax, dev_ax) = _figure(13, 3.6, 3)
    for ax, key, title in ((loss_ax, "train/loss", "train loss"), (lr_ax, "train/lr", "lr")):
        steps, values = series(metric_rows, key)
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set(title=title, xlabel="step")
    dev = sorted(history, key=lambda h: h["step"])
    dev_ax.plot([h["step"] for h in dev], [h["primary"] for h in dev], marker="o")
    dev_ax.set(title=f"dev: {dev_label}", xlabel="step", ylabel="Spearman x100")
    return fig


def main_keys(metrics: dict[str, float]) -> list[str]:
    """The headline metric of each task (`.../spearman_all`, `.../spearman`, ...), in order."""
    return [k for k in metrics if k.rsplit("/", 1)[-1] in MAIN_METRICS]


def sts_bars(
    final: dict[str, float],
    initial: dict[str, float] | None = None,
    references: dict[str, dict[str, float]] | None = None,
):
    """Per task: bars for this run's test numbers and the start checkpoint's; a marker for each
    reference (label -> {metric key: value}) that has any of the same keys (published tables
    are many: markers keep the bars readable)."""
    keys = main_keys(final)
    bars = {"this run": final, **({"start checkpoint": initial} if initial else {})}
    shown = {
        label: values
        for label, values in (references or {}).items()
        if any(k in values for k in keys)
    }
    fig, (ax,) = _figure(max(6.0, 1.1 * len(keys) + (4.5 if shown else 1.5)), 4.2)
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars.items()):
        heights = [values.get(k, math.nan) for k in keys]
        positions = [x + (i - (len(bars) - 1) / 2) * width for x in range(len(keys))]
        drawn = ax.bar(positions, heights, width, label=label)
        ax.bar_label(drawn, fmt="%.1f", fontsize=7, padding=1)
    for i, (label, values) in enumerate(shown.items()):
        heights = [values.get(k, math.nan) for k in keys]
        marker = "os^vD<>pP*Xh"[i % 12]
        ax.plot(range(len(keys)), heights, linestyle="none", marker=marker, label=label)
    ax.set_xticks(range(len(keys)), [k.split("/")[-2] for k in keys])
    protocol = keys[0].split("/")[-3] if keys and keys[0].count("/") >= 2 else ""
    ax.set(ylabel="Spearman x100", title=f"test, {protocol} protocol".strip(", "))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def alignment_uniformity(history: list[dict]):
    """Dev diagnostics at each evaluation: x uniformity, y alignment (lower-left is better)."""
    points = sorted(
        (h for h in history if "diagnostics/alignment" in h and "diagnostics/uniformity" in h),
        key=lambda h: h["step"],
    )
    x = [h["diagnostics/uniformity"] for h in points]
    y = [h["diagnostics/alignment"] for h in points]
    fig, (ax,) = _figure(5.5, 4.5)
    ax.plot(x, y, color="0.6", zorder=1)
    dots = ax.scatter(x, y, c=[h["step"] for h in points], cmap="viridis", zorder=2)
    for h, xi, yi in zip(points, x, y):
        ax.annotate(str(h["step"]), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    fig.colorbar(dots, ax=ax, label="step")
    ax.set(xlabel="uniformity (lower: more uniform)", ylabel="alignment (lower: closer positives)")
    ax.set_title("alignment vs uniformity on dev")
    return fig


# ---------------------------------------------------------------------------------------------
# The end of a training run.


def published_references(protocol: str) -> dict[str, dict[str, float]]:
    """The papers' tables under our test metric keys, for `protocol` (reports/baselines.py)."""
    from csetrain.app.reports.baselines import reference_scores

    return reference_scores(protocol)


def write_run_plots(
    run_dir: Path,
    tracker,
    history: list[dict],
    dev_label: str,
    test_metrics: dict[str, float],
    references: dict[str, dict[str, float]] | None = None,
) -> list[Path]:
    """Every plot the run has data for, into `run_dir/plots/`, logged under `plots/`.

    `references`: published numbers (label -> {test metric key: value}) drawn beside the
    run's own, e.g. from the paper tables; None draws the run against its start only.
    """
    run_dir, folder = Path(run_dir), Path(run_dir) / "plots"
    start = run_dir / START_FILE
    initial = json.loads(start.read_text())["metrics"] if start.is_file() else None
    plots = {
        "training_curves": lambda: training_curves(
            read_metric_log(run_dir / METRIC_LOG), history, dev_label
        ),
        "sts_bars": lambda: sts_bars(test_metrics, initial, references),
        "alignment_uniformity": lambda: alignment_uniformity(history),
    }
    if not main_keys(test_metrics):  # e.g. a non-STS test evaluator
        plots.pop("sts_bars")
    if not any("diagnostics/alignment" in h for h in history):  # dev_eval.diagnostics=false
        plots.pop("alignment_uniformity")
    written = []
    for name, draw in plots.items():
        path = never_fail(
            f"plot {name}", lambda d=draw, n=name: save_figure(d(), folder / f"{n}.png")
        )
        if path is not None:
            written.append(path)
    if written:
        tracker.log_artifacts(folder, "plots")
    return written
