"""Runs that never lie, against a real SQLite store: a resumed run ends FINISHED with its model
in the store; a call the store rejects never blocks the calls behind it; an upload the store
kept truncated fails the command; a store that went away mid-run is completed by `runs sync`;
two runs creating one new store both succeed."""

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mlflow import MlflowClient

from csetrain.app.store import artifacts
from csetrain.app.store.tracker import MlflowTracker, store_key
from csetrain.config import TrackingConfig

from .helpers import csetrain_in_process, shared_cache, sigterm_at_step, small_sts

REPO = Path(__file__).resolve().parents[1]


def _train(tmp_path, *extra):
    return csetrain_in_process(
        "train",
        "experiment=demo",
        "model=tiny",
        "trainer.max_steps=6",
        "trainer.batch_size=8",
        "trainer.eval_every=3",
        "trainer.save_every=1",
        "trainer.log_every=1",
        "trainer.progress=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"paths.output_dir={tmp_path}/out",
        f"paths.data_dir={small_sts()}",  # evaluation data: STS-B cut to 200 pairs
        f"paths.cache_dir={shared_cache()}",  # sample tokens, start scores: once
        *extra,
    )


def _runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("csetrain-demo").experiment_id
    return client, client.search_runs([experiment])


def _stored_file(client, run_id: str, name: str) -> bytes:
    root = client.get_run(run_id).info.artifact_uri.removeprefix("file://")
    return (Path(root) / name).read_bytes()


def test_key_mapping_is_what_mlflow_accepts():
    assert store_key("choice.eval@dev_eval") == "choice.eval/dev_eval"
    assert store_key("choice.model") == "choice.model"  # valid keys are left alone
    assert store_key("a#b") == "a_b"


def test_sigterm_then_resume_ends_finished_with_the_model(tmp_path, monkeypatch, mlflow_store):
    mlflow_store(tmp_path / "mlflow.db")
    restore = sigterm_at_step(monkeypatch, 3)  # a real SIGTERM, delivered mid-run
    killed = _train(tmp_path, "trainer.resume=auto")
    assert killed.returncode != 0
    restore()
    client, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED"]

    resumed = _train(tmp_path, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "rejected" not in resumed.stdout and "unreachable" not in resumed.stdout
    client, runs = _runs(tmp_path)
    assert len(runs) == 1  # the same MLflow run, continued
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed"] == "true"
    assert run.data.tags["choice.eval/dev_eval"] == "stsb_dev"
    assert not any("@" in k for k in [*run.data.tags, *run.data.params])
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, 7))  # the resumed steps reached the store too
    assert "test/senteval/stsb/spearman" in run.data.metrics
    local = Path(run.data.tags["run_dir"]) / "checkpoints" / "best" / "model.safetensors"
    assert _stored_file(client, run.info.run_id, "model/model.safetensors") == local.read_bytes()
    assert not (Path(run.data.tags["run_dir"]) / "unsynced_metrics.jsonl").exists()


def test_rejected_call_does_not_block_later_calls(tmp_path, mlflow_store, capsys):
    uri = mlflow_store(tmp_path / "mlflow.db")
    tracker = MlflowTracker(TrackingConfig(uri=uri, experiment="faults"), "rejected", {}, {})
    tracker.spill_path = tmp_path / "run" / "unsynced_metrics.jsonl"
    tracker.log_metrics({"train/loss": 1.0}, 1)
    tracker.set_tags({"../outside": "x"})  # a key MLflow refuses (it resolves outside the run)
    tracker.log_metrics({"train/loss": 0.5}, 2)
    tracker.set_tags({"after": "y"})
    assert len(tracker._pending) == 0  # nothing waits behind the refused call
    assert tracker.finish("FINISHED", retries=(0.1,)) is None
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "rejected set_tag" in out
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["after"] == "y"
    assert sorted(m.step for m in client.get_metric_history(tracker.run_id, "train/loss")) == [1, 2]
    rows = [json.loads(line) for line in tracker.spill_path.read_text().splitlines()]
    assert [r["rejected"]["call"] for r in rows] == ["set_tag"]  # recorded, not for replay


def _truncate_stored_model(monkeypatch):
    """The store's disk fills during the model upload: its copy of the weights is cut short."""
    original = artifacts.StoreCalls.log_artifacts

    def upload_into_full_disk(self, run_id, local_dir, artifact_path):
        self.client.log_artifacts(run_id, local_dir, artifact_path)
        if artifact_path == "model":
            root = self.client.get_run(run_id).info.artifact_uri.removeprefix("file://")
            stored = Path(root) / "model" / "model.safetensors"
            stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 5])
        artifacts.confirm_upload(self.client, run_id, Path(local_dir), artifact_path)

    monkeypatch.setattr(artifacts.StoreCalls, "log_artifacts", upload_into_full_disk)
    return original


def test_truncated_model_upload_fails_the_command(tmp_path, monkeypatch, mlflow_store):
    mlflow_store(tmp_path / "mlflow.db")
    _truncate_stored_model(monkeypatch)
    result = _train(tmp_path, "trainer.eval_every=0")
    assert result.returncode != 0
    assert "model/model.safetensors is" in result.stderr and "bytes locally" in result.stderr
    assert "done:" not in result.stderr
    client, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]
    local = Path(runs[0].data.tags["run_dir"]) / "checkpoints" / "best" / "model.safetensors"
    stored = _stored_file(client, runs[0].info.run_id, "model/model.safetensors")
    assert local.is_file() and len(stored) < local.stat().st_size  # the local copy is whole


def test_store_gone_mid_run_is_completed_by_sync(tmp_path, monkeypatch, mlflow_store):
    uri = mlflow_store(tmp_path / "mlflow.db")
    tracker = MlflowTracker(TrackingConfig(uri=uri, experiment="faults"), "gone", {}, {})
    tracker.spill_path = tmp_path / "run" / "unsynced_metrics.jsonl"
    tracker.log_metrics({"train/loss": 1.0}, 1)
    model = tmp_path / "run" / "best"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(os.urandom(4096))

    def refused(*args, **kwargs):
        raise ConnectionError("connection refused")

    for call in ("log_batch", "set_tag", "set_terminated", "log_artifacts"):
        monkeypatch.setattr(artifacts.StoreCalls, call, refused)
    tracker.log_metrics({"train/loss": 0.5}, 2)
    tracker.log_artifacts(model, "model")
    problem = tracker.finish("FINISHED", retries=(0.01,))
    assert problem and "runs sync" in problem
    client = MlflowClient(uri)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    spilled = tracker.spill_path.read_text()
    down = csetrain_in_process("runs", "sync", str(tracker.spill_path), "--uri", uri)
    assert down.returncode == 2 and "still unreachable" in down.stderr
    assert tracker.spill_path.read_text() == spilled  # nothing was sent: everything kept
    monkeypatch.undo()  # the store is back

    result = csetrain_in_process("runs", "sync", str(tracker.spill_path), "--uri", uri)
    assert result.returncode == 0 and "sent 1 metrics" in result.stdout
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(tracker.run_id, "train/loss")) == [1, 2]
    stored = _stored_file(client, tracker.run_id, "model/model.safetensors")
    assert stored == (model / "model.safetensors").read_bytes()


def test_http_retry_warnings_stay_off_the_console(tmp_path, mlflow_store, caplog):
    import logging

    from csetrain.app.store.tracker import connect

    connect(TrackingConfig(uri=mlflow_store(tmp_path / "mlflow.db"), experiment="quiet"))
    caplog.set_level(logging.INFO)
    logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=0)) after ...")
    assert not any("Retrying" in r.getMessage() for r in caplog.records)
    caplog.set_level(logging.DEBUG)  # with debug logging on, they are kept, at debug
    logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=0)) after ...")
    assert [r.levelname for r in caplog.records if "Retrying" in r.getMessage()] == ["DEBUG"]


def test_two_processes_creating_one_new_store_both_succeed(tmp_path):
    db, go = tmp_path / "new" / "mlflow.db", tmp_path / "go"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from csetrain.app.store.tracker import connect
        from csetrain.config import TrackingConfig
        import mlflow.store.tracking.sqlalchemy_store  # imports done before the start signal
        Path({str(tmp_path)!r}, "ready-" + sys.argv[1]).touch()
        while not Path({str(go)!r}).exists():
            time.sleep(0.01)
        client, experiment = connect(TrackingConfig(uri="sqlite:///{db}", experiment="race"))
        client.create_run(experiment)
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    go.touch()  # both connect at once to a store that does not exist yet
    outcomes = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outcomes, strict=True):
        assert proc.returncode == 0 and out.decode().strip() == "ok", err.decode()[-2000:]
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("race").experiment_id
    assert len(client.search_runs([experiment])) == 2


def test_full_store_disk_ends_the_run_failed(tmp_path, monkeypatch, mlflow_store):
    uri = mlflow_store(tmp_path / "mlflow.db")
    tracker = MlflowTracker(TrackingConfig(uri=uri, experiment="faults"), "full", {}, {})
    tracker.spill_path = tmp_path / "run" / "unsynced_metrics.jsonl"
    results = tmp_path / "run" / "eval_results.json"
    results.parent.mkdir()
    results.write_text("{}")

    def disk_full(self, run_id, local_file, artifact_path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.StoreCalls, "log_artifact", disk_full)
    tracker.log_artifact(results)
    tracker.log_metrics({"train/loss": 0.5}, 1)  # not blocked behind the failed upload
    problem = tracker.finish("FINISHED", retries=(0.01,))
    assert problem and "No space left on device" in problem and "ended FAILED" in problem
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.metrics["train/loss"] == 0.5
    assert results.read_text() == "{}"  # the local copy is kept
