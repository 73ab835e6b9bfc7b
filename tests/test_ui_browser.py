"""The MLflow UI in a real browser: headless Chromium renders the experiment and the comparison
page of two csetrain runs served by `csetrain ui`; their names and metrics are on the page.
Writes a screenshot of the comparison to $CSETRAIN_SCREENSHOT_DIR (docs/ in the repo)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from csetrain.app.reports.tables import ui_compare_link

from .test_runs import _free_port, make_two_runs

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags this machine needs: no sandbox as root, no GPU, no calls home on a closed network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=30000",
]


def _chromium(url: str, profile: Path, *args: str) -> str:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout


@pytest.fixture(scope="module")
def served_runs(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (installed by .ci/run)")
    pytest.importorskip("flask", reason="needs csetrain[ui] (full mlflow)")
    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp}/mlflow.db"
    runs = make_two_runs(tmp, uri)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "csetrain", "ui", "--store", uri, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(1)
    yield base, runs, tmp
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


def _run_dict(run, base):
    info = json.load(urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?run_id={run.run_id}"))[
        "run"
    ]["info"]
    return {"id": run.run_id, "experiment_id": info["experiment_id"]}


def test_experiment_page_lists_the_runs(served_runs):
    base, runs, tmp = served_runs
    experiment_id = _run_dict(runs[0], base)["experiment_id"]
    dom = _chromium(f"{base}/#/experiments/{experiment_id}/runs", tmp / "profile-a", "--dump-dom")
    assert "csetrain-lr-1e-5" in dom and "csetrain-lr-5e-3" in dom


def test_comparison_page_shows_both_runs_and_their_metrics(served_runs):
    base, runs, tmp = served_runs
    url = ui_compare_link(base, *(_run_dict(r, base) for r in runs))
    dom = _chromium(url, tmp / "profile-b", "--dump-dom")
    assert "csetrain-lr-1e-5" in dom and "csetrain-lr-5e-3" in dom
    assert "eval/best" in dom and "test/senteval/stsb/spearman" in dom
    shot_dir = Path(os.environ.get("CSETRAIN_SCREENSHOT_DIR", tmp))
    shot_dir.mkdir(parents=True, exist_ok=True)
    shot = shot_dir / "mlflow_compare.png"
    _chromium(url, tmp / "profile-c", f"--screenshot={shot}", "--window-size=1400,1000")
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
