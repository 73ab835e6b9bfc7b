"""`csetrain runs list|compare|best` against a real store, and `csetrain ui` serving it over
MLflow's REST API."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from csetrain.app.cli import app
from csetrain.app.train import train

from .helpers import shared_cache, small_sts
from .test_config import _compose


def make_two_runs(tmp, uri):
    """Two tiny runs in `uri` that differ only in learning rate (names csetrain-lr-<lr>)."""
    return [
        train(
            _compose(
                [
                    "experiment=demo",
                    "model=tiny",
                    "trainer.max_steps=2",
                    "trainer.eval_every=2",
                    "trainer.batch_size=8",
                    "trainer.progress=false",
                    "tracking.log_model=false",
                    f"trainer.lr={lr}",
                    f"tracking.uri={uri}",
                    f"tracking.run_name=csetrain-lr-{lr}",
                    f"paths.output_dir={tmp}/out",
                    f"paths.data_dir={small_sts()}",  # evaluation data: STS-B cut to 200 pairs
                    f"paths.cache_dir={shared_cache()}",  # sample tokens, start scores: once
                ]
            )
        )
        for lr in ("1e-5", "5e-3")
    ]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, _empty_mlflow_db):
    tmp = tmp_path_factory.mktemp("runs")
    shutil.copyfile(_empty_mlflow_db, tmp / "mlflow.db")  # an empty store, schema made once
    uri = f"sqlite:///{tmp}/mlflow.db"
    return uri, make_two_runs(tmp, uri)


def _cli(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_runs_list_shows_both_runs_with_choices_and_metrics(two_runs):
    uri, (a, b) = two_runs
    out = _cli("runs", "list", "--uri", uri, "-e", "csetrain-demo")
    assert a.run_id[:8] in out and b.run_id[:8] in out
    assert "eval/best" in out  # (choice columns are filled for CLI runs: see test_sweep)
    assert f"{b.metrics['eval/best']:.2f}" in out


def test_runs_compare_shows_config_and_metric_differences(two_runs):
    uri, (a, b) = two_runs
    out = _cli("runs", "compare", a.run_id[:8], b.run_id[:8], "--uri", uri, "-e", "csetrain-demo")
    config_part = out.split("metrics:")[0]
    assert (
        "trainer.lr" in config_part and "trainer.max_steps" not in config_part
    )  # only differences
    line = next(row for row in out.splitlines() if row.startswith("eval/best "))
    assert f"{b.metrics['eval/best'] - a.metrics['eval/best']:.2f}" in line
    assert "#/compare-runs?runs=" in out and a.run_id in out and b.run_id in out


def test_runs_best_picks_the_highest_dev_score(two_runs):
    uri, summaries = two_runs
    out = json.loads(_cli("runs", "best", "--uri", uri, "-e", "csetrain-demo", "--json"))
    best = {s.run_id: s.metrics["eval/best"] for s in summaries}
    # By value: two 2-step tiny runs may tie (neither beats its step-0 score).
    assert best[out["id"]] == max(best.values())


def _row(out: str, metric: str) -> list[str]:
    return next(r for r in out.splitlines() if r.startswith(metric + " ")).split()


def test_runs_compare_adds_a_paired_bootstrap_on_the_test_pairs(two_runs):
    uri, (a, b) = two_runs
    args = ["--uri", uri, "-e", "csetrain-demo", "--resamples", "300"]
    out = _cli("runs", "compare", a.run_id[:8], b.run_id[:8], *args)
    assert "paired bootstrap over test pairs (300 resamples, seed 0)" in out
    metric, va, vb, delta, low, high, p = _row(
        out.split("paired bootstrap")[1], "senteval/stsb/spearman"
    )
    key = "test/senteval/stsb/spearman"
    assert float(va) == pytest.approx(a.metrics[key], abs=0.005)  # recomputed from the pairs
    assert float(vb) == pytest.approx(b.metrics[key], abs=0.005)
    assert float(delta) == pytest.approx(b.metrics[key] - a.metrics[key], abs=0.01)
    assert float(low.strip("[,")) <= float(delta) <= float(high.strip("]")) and 0 < float(p) <= 1
    same = _cli("runs", "compare", a.run_id[:8], a.run_id[:8], *args)
    assert _row(same.split("paired bootstrap")[1], "senteval/stsb/spearman")[3:] == [
        "0.00",
        "[+0.00,",
        "+0.00]",
        "1.000",
    ]


def test_runs_compare_takes_run_dirs_and_reads_pairs_from_the_store(two_runs, tmp_path):
    from csetrain.app.reports.tables import pair_scores_for
    from csetrain.app.store.queries import read_run
    from csetrain.eval.pair_scores import FILE_NAME

    uri, (a, b) = two_runs
    out = _cli("runs", "compare", a.run_dir, b.run_dir, "--uri", uri, "-e", "csetrain-demo")
    assert f"A = {a.run_id}" in out and f"B = {b.run_id}" in out and "B-A" in out
    offline = _cli("runs", "compare", a.run_dir, b.run_dir, "--uri", f"sqlite:///{tmp_path}/x.db")
    assert f"A = {Path(a.run_dir).resolve()}" in offline and "95% CI" in offline  # files only
    run = read_run(uri, a.run_id)
    local = pair_scores_for(run, uri)
    run["tags"]["run_dir"] = str(tmp_path)  # no file there: the MLflow artifact is used
    logged = pair_scores_for(run, uri)
    assert (Path(a.run_dir) / FILE_NAME).is_file()
    assert (logged.tasks["stsb"].sims == local.tasks["stsb"].sims).all()


def test_runs_best_never_picks_a_published_reference(two_runs):
    uri, summaries = two_runs
    _cli("runs", "baselines", "--uri", uri, "-e", "csetrain-demo")
    metric = "test/senteval/stsb/spearman"  # references have it, with higher numbers
    out = json.loads(
        _cli("runs", "best", "--uri", uri, "-e", "csetrain-demo", "--metric", metric, "--json")
    )
    assert out["id"] in {s.run_id for s in summaries}  # (the two may tie)
    assert out["metrics"][metric] == max(s.metrics[metric] for s in summaries)


def test_runs_on_a_missing_store_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["runs", "list", "--uri", f"sqlite:///{tmp_path}/none.db"])
    assert result.exit_code == 2 and "no MLflow store" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # starts a real MLflow server (~20 s on 2 cores), like test_tracking_faults
def test_ui_serves_the_runs_over_rest(two_runs):
    pytest.importorskip("flask", reason="needs csetrain[ui] (full mlflow)")
    uri, (a, b) = two_runs
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "csetrain", "ui", "--store", uri, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the server forks workers: stop the whole group
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("MLflow server did not answer /health within 120 s")
        experiment = json.load(
            urllib.request.urlopen(
                f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=csetrain-demo"
            )
        )
        body = json.dumps({"experiment_ids": [experiment["experiment"]["experiment_id"]]}).encode()
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", body, {"Content-Type": "application/json"}
        )
        runs = json.load(urllib.request.urlopen(request))["runs"]
        served = {
            r["info"]["run_id"]: {m["key"]: m["value"] for m in r["data"]["metrics"]} for r in runs
        }
        assert {a.run_id, b.run_id} <= served.keys()
        assert served[a.run_id]["eval/best"] == pytest.approx(a.metrics["eval/best"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
