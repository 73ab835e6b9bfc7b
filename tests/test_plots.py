"""Plots: what is drawn equals the data it was given (read back from the Figure), PNGs are valid,
the start checkpoint's scores are cached by weights + eval config, a failing plot only warns, and
a tiny `csetrain train objective=2dmse` logs the plots and the grid as MLflow artifacts."""

import json
import logging

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from omegaconf import OmegaConf

from csetrain.app.reports.plots import (
    METRIC_LOG,
    START_FILE,
    MetricLog,
    alignment_uniformity,
    main_keys,
    never_fail,
    save_figure,
    score_start,
    series,
    sts_bars,
    training_curves,
    write_run_plots,
)
from csetrain.app.store.tracker import NullTracker
from csetrain.eval.grid import grid_heatmap
from csetrain.eval.sts import EvalResult

from .helpers import csetrain_cli, only_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HISTORY = [
    {"step": 0, "primary": 70.0, "diagnostics/alignment": 0.10, "diagnostics/uniformity": -1.0},
    {"step": 20, "primary": 75.5, "diagnostics/alignment": 0.20, "diagnostics/uniformity": -2.5},
    {"step": 40, "primary": 74.0, "diagnostics/alignment": 0.25, "diagnostics/uniformity": -3.0},
]
ROWS = [
    {"step": 10, "train/loss": 2.0, "train/lr": 3e-5},
    {"step": 20, "train/loss": 1.5, "train/lr": 2e-5},
    {"step": 20, "eval/senteval/stsb_dev/spearman": 75.5},
    {"step": 20, "train/loss": 1.4, "train/lr": 2e-5},  # re-logged after a resume: wins
    {"step": 30, "train/loss": 1.2, "train/lr": 1e-5},
]
FINAL = {
    "test/senteval/sts12/spearman_all": 70.0,
    "test/senteval/sts12/spearman_mean": 69.0,
    "test/senteval/stsb/spearman": 80.0,
    "test/senteval/stsb/pearson": 79.0,
    "test/senteval/avg/spearman": 75.0,
}


class RecordingTracker(NullTracker):
    def __init__(self):
        self.metrics, self.artifacts = [], []

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def log_artifacts(self, local_dir, artifact_path=None):
        self.artifacts.append((str(local_dir), artifact_path))


def _bar_heights(ax, label):
    (container,) = [c for c in ax.containers if c.get_label() == label]
    return [bar.get_height() for bar in container]


def test_series_keeps_the_last_value_logged_at_a_step():
    assert series(ROWS, "train/loss") == ([10, 20, 30], [2.0, 1.4, 1.2])
    assert series(ROWS, "missing") == ([], [])


def test_training_curves_draw_the_logged_series_and_the_dev_history():
    fig = training_curves(ROWS, list(reversed(HISTORY)), "eval/senteval/stsb_dev")
    loss, lr, dev = fig.axes[:3]
    assert list(loss.lines[0].get_xdata()) == [10, 20, 30]
    assert list(loss.lines[0].get_ydata()) == [2.0, 1.4, 1.2]
    assert list(lr.lines[0].get_ydata()) == [3e-5, 2e-5, 1e-5]
    assert list(dev.lines[0].get_xdata()) == [0, 20, 40]  # sorted by step
    assert list(dev.lines[0].get_ydata()) == [70.0, 75.5, 74.0]


def test_main_keys_pick_one_headline_number_per_task():
    assert main_keys(FINAL) == [
        "test/senteval/sts12/spearman_all",
        "test/senteval/stsb/spearman",
        "test/senteval/avg/spearman",
    ]


def test_sts_bars_show_run_start_and_matching_references():
    initial = {"test/senteval/sts12/spearman_all": 60.0, "test/senteval/stsb/spearman": 65.0}
    references = {
        "paper A": {"test/senteval/stsb/spearman": 76.85, "test/senteval/avg/spearman": 76.25},
        "mteb only": {"test/mteb/STS12/cosine_spearman": 72.4},  # other protocol: not drawn
    }
    fig = sts_bars(FINAL, initial, references)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sts12", "stsb", "avg"]
    assert _bar_heights(ax, "this run") == [70.0, 80.0, 75.0]
    assert _bar_heights(ax, "start checkpoint")[:2] == [60.0, 65.0]
    assert np.isnan(_bar_heights(ax, "start checkpoint")[2])  # no start value: no bar
    assert [c.get_label() for c in ax.containers] == ["this run", "start checkpoint"]
    (paper,) = ax.lines  # references are markers; the MTEB-only one shares no key: not drawn
    assert paper.get_label() == "paper A"
    assert np.isnan(paper.get_ydata()[0]) and list(paper.get_ydata()[1:]) == [76.85, 76.25]


def test_alignment_uniformity_is_the_diagnostics_path():
    fig = alignment_uniformity(HISTORY + [{"step": 60, "primary": 1.0}])  # no diagnostics: skipped
    ax = fig.axes[0]
    assert ax.collections[0].get_offsets().tolist() == [[-1.0, 0.10], [-2.5, 0.20], [-3.0, 0.25]]
    assert [t.get_text() for t in ax.texts] == ["0", "20", "40"]


def test_grid_heatmap_cells_and_png(tmp_path):
    fig = grid_heatmap({1: {8: 10.0, 16: 20.0}, 2: {8: 30.0, 16: 40.0}}, "t")
    image = fig.axes[0].images[0].get_array()
    assert image.tolist() == [[10.0, 20.0], [30.0, 40.0]]  # row = layer, column = size
    path = save_figure(fig, tmp_path / "sub" / "grid.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert imread(path).ndim == 3  # a decodable image


def test_never_fail_warns_instead_of_raising(caplog):
    def broken():
        raise RuntimeError("no display")

    with caplog.at_level(logging.WARNING, logger="csetrain.app.reports.plots"):
        assert never_fail("plot x", broken) is None
    assert "plot x failed" in caplog.text and "no display" in caplog.text
    assert never_fail("fine", lambda a, b: a + b, 1, b=2) == 3


def test_metric_log_forwards_and_records(tmp_path):
    inner = RecordingTracker()
    logged = MetricLog(inner, tmp_path / METRIC_LOG)
    logged.log_metrics({"train/loss": 1.0}, 5)
    logged.log_artifacts(tmp_path, "x")  # everything else goes to the wrapped tracker
    assert inner.metrics == [(5, {"train/loss": 1.0})] and inner.artifacts == [(str(tmp_path), "x")]
    assert json.loads((tmp_path / METRIC_LOG).read_text()) == {"step": 5, "train/loss": 1.0}


def test_write_run_plots_writes_valid_pngs_and_survives_a_broken_plot(tmp_path):
    (tmp_path / METRIC_LOG).write_text("\n".join(json.dumps(r) for r in ROWS))
    (tmp_path / START_FILE).write_text(json.dumps({"metrics": {"test/senteval/stsb/spearman": 1}}))
    tracker = RecordingTracker()
    paths = write_run_plots(tmp_path, tracker, HISTORY, "dev", FINAL)
    assert sorted(p.name for p in paths) == [
        "alignment_uniformity.png",
        "sts_bars.png",
        "training_curves.png",
    ]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)
    assert tracker.artifacts == [(str(tmp_path / "plots"), "plots")]
    broken = [{"step": 0}]  # no `primary`: the curves fail, the other plots are still written
    paths = write_run_plots(tmp_path / "b", RecordingTracker(), broken, "dev", FINAL)
    assert [p.name for p in paths] == ["sts_bars.png"]  # and no diagnostics: no trajectory


class CountingEvaluator:
    """A stand-in test evaluator: its score is the sum of the encoder's weights."""

    calls = 0

    def __init__(self, name: str = "x", compare_initial: bool = True, batch_size: int = 1):
        self.name = name

    def __call__(self, encoder):
        CountingEvaluator.calls += 1
        value = float(sum(p.detach().sum() for p in encoder.parameters()))
        return EvalResult({f"senteval/{self.name}/spearman": value}, value, "k")


def test_score_start_is_cached_by_weights_and_eval_config(tmp_path):
    cfg = OmegaConf.create(
        {"_target_": f"{__name__}.CountingEvaluator", "compare_initial": True, "batch_size": 1}
    )
    encoder = torch.nn.Linear(3, 2)
    CountingEvaluator.calls = 0
    first = score_start(cfg, encoder, tmp_path / "run1", tmp_path / "cache")
    expected = float(sum(p.detach().sum() for p in encoder.parameters()))
    assert first == {"test/senteval/x/spearman": pytest.approx(expected)}
    assert json.loads((tmp_path / "run1" / START_FILE).read_text())["metrics"] == first
    assert score_start(cfg, encoder, tmp_path / "run2", tmp_path / "cache") == first
    bigger_batch = OmegaConf.merge(cfg, {"batch_size": 64})  # does not change the scores
    assert score_start(bigger_batch, encoder, tmp_path / "run3", tmp_path / "cache") == first
    assert CountingEvaluator.calls == 1  # scored once, then read from the cache
    other_task = OmegaConf.merge(cfg, {"name": "y"})
    score_start(other_task, encoder, tmp_path / "run4", tmp_path / "cache")
    with torch.no_grad():
        encoder.weight.add_(1.0)
    moved = score_start(cfg, encoder, tmp_path / "run5", tmp_path / "cache")
    assert CountingEvaluator.calls == 3
    assert moved["test/senteval/x/spearman"] == pytest.approx(expected + 6)
    off = OmegaConf.merge(cfg, {"compare_initial": False})
    assert score_start(off, encoder, tmp_path / "run6", tmp_path / "cache") is None
    assert not (tmp_path / "run6").exists()


@pytest.mark.slow
def test_cli_2dmse_run_logs_plots_and_grid_as_artifacts(tmp_path, mlflow_store):
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = csetrain_cli(
        "train",
        "experiment=demo",
        "model=tiny",
        "objective=2dmse",
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "trainer.log_every=2",
        "trainer.batch_size=8",
        "trainer.progress=false",
        "tracking.log_model=false",
        f"tracking.uri={uri}",
        f"paths.output_dir={tmp_path}/out",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failed" not in proc.stderr  # no plot or grid warning
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    client, run = only_run(uri)
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {
        "plots/training_curves.png",
        "plots/sts_bars.png",
        "plots/alignment_uniformity.png",
    }
    grid = {a.path for a in client.list_artifacts(run.info.run_id, "grid")}
    assert grid == {"grid/grid.png", "grid/grid.md", "grid/grid.json"}
    history = client.get_metric_history(run.info.run_id, "eval/diagnostics/alignment")
    assert sorted(m.step for m in history) == [0, 2, 4]
    # the grid's full cell is the selected checkpoint's dev score
    full = run.data.metrics["grid/senteval/stsb_dev/spearman_l2_d32"]
    assert full == pytest.approx(metrics["eval/best"], abs=1e-3)
    run_dir = client.get_run(run.info.run_id).data.tags["run_dir"]
    from pathlib import Path

    start = json.loads((Path(run_dir) / START_FILE).read_text())["metrics"]
    assert set(start) == set(k for k in metrics if k.startswith("test/"))
