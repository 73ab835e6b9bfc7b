"""A tracking server that dies mid-run: metrics are buffered and none is lost once it is back;
one that never comes back leaves a JSON-lines file (metrics, artifacts, the run's end) that
`csetrain runs sync` replays, ending the run FINISHED with its model."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from csetrain.app.cli import app
from csetrain.app.store.tracker import MlflowTracker
from csetrain.config import TrackingConfig

pytestmark = pytest.mark.slow  # starts a real MLflow server five times (~20 s each)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(store: str, port: int) -> subprocess.Popen:
    pytest.importorskip("flask", reason="needs csetrain[ui] (full mlflow)")
    proc = subprocess.Popen(  # the product's own `csetrain ui` (it execs the MLflow server)
        [sys.executable, "-m", "csetrain", "ui", "--store", store, "--port", str(port)],
        cwd=store.removeprefix("sqlite:///").rsplit("/", 1)[0],  # its ./mlartifacts beside the db
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the server forks workers
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("MLflow server did not start")


def _kill(proc):
    """kill -9 the server and its workers."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_server_down_mid_run_loses_no_metric(tmp_path):
    store, port = f"sqlite:///{tmp_path}/store.db", _free_port()
    server = _server(store, port)
    uri = f"http://127.0.0.1:{port}"
    tracker = MlflowTracker(TrackingConfig(uri=uri, experiment="faults"), "flaky", {}, {})
    try:
        for step in range(1, 6):
            tracker.log_metrics({"train/loss": 1.0 / step}, step)
        _kill(server)
        started = time.time()
        for step in range(6, 11):  # the store is gone: training must not wait on it
            tracker.log_metrics({"train/loss": 1.0 / step}, step)
        assert time.time() - started < 60 and len(tracker._pending) >= 5
        server = _server(store, port)
        for step in range(11, 16):
            tracker.log_metrics({"train/loss": 1.0 / step}, step)
        tracker.finish("FINISHED")
    finally:
        _kill(server)
    from mlflow import MlflowClient

    client = MlflowClient(store)
    history = client.get_metric_history(tracker.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 16))  # 15 logged of 15 expected
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_store_that_never_returns_spills_and_syncs(tmp_path, capsys):
    store, port = f"sqlite:///{tmp_path}/store.db", _free_port()
    server = _server(store, port)
    tracker = MlflowTracker(
        TrackingConfig(uri=f"http://127.0.0.1:{port}", experiment="faults"), "lost", {}, {}
    )
    tracker.spill_path = tmp_path / "run" / "unsynced_metrics.jsonl"
    tracker.log_metrics({"train/loss": 0.5}, 1)
    _kill(server)
    tracker.log_metrics({"train/loss": 0.25, "train/lr": 1e-5}, 2)
    problem = tracker.finish("FINISHED", retries=(0.1,))
    assert problem and "runs sync" in problem  # the run's end is not in the store: said so
    rows = [json.loads(line) for line in tracker.spill_path.read_text().splitlines()]
    assert [r.get("key", r.get("call")) for r in rows] == [
        "train/loss",
        "train/lr",
        "set_terminated",
    ]
    out = capsys.readouterr()
    assert "Retrying" not in out.out + out.err  # urllib3's retry chatter stays in the debug log
    result = CliRunner().invoke(app, ["runs", "sync", str(tracker.spill_path), "--uri", store])
    assert result.exit_code == 0 and "sent 2 metrics" in result.output
    from mlflow import MlflowClient

    client = MlflowClient(store)
    steps = [m.step for m in client.get_metric_history(tracker.run_id, "train/loss")]
    assert sorted(steps) == [1, 2]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_server_killed_mid_training_is_finished_by_sync(tmp_path, monkeypatch, mlflow_store):
    from csetrain.app.store.tracker import MlflowTracker as Tracker

    from .helpers import csetrain_in_process, shared_cache, small_sts

    store, port = mlflow_store(tmp_path / "store.db"), _free_port()
    uri = f"http://127.0.0.1:{port}"
    servers = [_server(store, port)]
    original = Tracker.log_metrics

    def kill_server_at_step_3(self, metrics, step):
        original(self, metrics, step)
        if step == 3 and "train/loss" in metrics and servers:
            _kill(servers.pop())

    monkeypatch.setattr(Tracker, "log_metrics", kill_server_at_step_3)
    try:
        result = csetrain_in_process(
            "train", "experiment=demo", "model=tiny", "trainer.max_steps=6",
            "trainer.batch_size=8", "trainer.eval_every=3", "trainer.log_every=1",
            "trainer.progress=false", f"tracking.uri={uri}", f"paths.output_dir={tmp_path}/out",
            f"paths.data_dir={small_sts()}", f"paths.cache_dir={shared_cache()}",
        )  # fmt: skip
        assert result.returncode != 0 and "runs sync" in result.stderr
        assert "Retrying" not in result.stdout + result.stderr
        spill = next(tmp_path.glob("out/runs/*/*/unsynced_metrics.jsonl"))
        servers.append(_server(store, port))
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        run_id = json.loads(spill.read_text().splitlines()[0])["run_id"]
        assert client.get_run(run_id).info.status == "RUNNING"
        synced = CliRunner().invoke(app, ["runs", "sync", str(spill), "--uri", uri])
        assert synced.exit_code == 0, synced.output
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and "test/senteval/stsb/spearman" in run.data.metrics
        steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
        assert steps == list(range(1, 7))
        local = spill.parent / "checkpoints" / "best" / "model.safetensors"
        stored = {a.path: a.file_size for a in client.list_artifacts(run_id, "model")}
        assert stored["model/model.safetensors"] == local.stat().st_size
    finally:
        for server in servers:
            _kill(server)
