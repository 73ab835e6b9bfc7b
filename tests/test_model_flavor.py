"""`csetrain export --format mlflow`: the model logged with MLflow's sentence_transformers
flavor into its run, loadable as `runs:/<run id>/model` with csetrain's embeddings, registered
with the run's metrics as version tags; against the SQLite store and a real `mlflow server`."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from csetrain.app.export import ExportRequest, export_run
from csetrain.app.store.model_flavor import version_tags
from csetrain.app.store.queries import read_run
from csetrain.modeling.export import load_sentence_encoder

from .tolerances import assert_float32_of_float64_close

SENTENCES = ["a man is playing a guitar", "two dogs run on the beach", "hi", "the stock fell"]


def _load_and_compare(uri: str, run_id: str, folder) -> None:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.sentence_transformers.load_model(f"runs:/{run_id}/model")
        info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(previous)
    assert info.signature is not None and info.saved_input_example_info is not None
    # both float64 (the float32 weights cast exactly), so batching order cannot differ
    theirs = torch.from_numpy(model.double().encode(SENTENCES, convert_to_numpy=True))
    ours = load_sentence_encoder(folder).double().encode(SENTENCES)
    assert_float32_of_float64_close(ours, theirs)


def test_logged_model_loads_from_runs_uri_and_is_registered(trained_2dmse_run, tmp_path):
    uri, run_id = trained_2dmse_run
    run = read_run(uri, run_id)
    request = ExportRequest(["mlflow"], tmp_path / "m", register_as="csetrain-tiny")
    made = export_run(uri, run, request)
    assert made["model_uri"] == f"runs:/{run_id}/model"
    assert made["registered"] == "csetrain-tiny v1"
    _load_and_compare(uri, run_id, tmp_path / "m")
    tags = version_tags(uri, "csetrain-tiny", "1")
    key = "test/senteval/stsb/spearman"
    assert tags[key] == f"{run['metrics'][key]:.4f}" and tags["csetrain.run_id"] == run_id
    assert tags["eval/best"] == f"{run['metrics']['eval/best']:.4f}"
    after = read_run(uri, run_id)
    assert after["status"] == "FINISHED"  # logging into the finished run leaves it finished


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # starts a real MLflow server (~20 s on 2 cores)
def test_logged_through_a_real_mlflow_server(trained_2dmse_run, tmp_path):
    pytest.importorskip("flask", reason="needs csetrain[ui] (full mlflow)")
    store, run_id = trained_2dmse_run
    port = _free_port()
    server = subprocess.Popen(  # the product's own `csetrain ui` (it execs the MLflow server)
        [sys.executable, "-m", "csetrain", "ui", "--store", store, "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the server forks workers: stop the whole group
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("MLflow server did not answer /health within 120 s")
        request = ExportRequest(["mlflow"], tmp_path / "m", register_as="csetrain-served")
        made = export_run(uri, read_run(uri, run_id), request)
        assert made["registered"].startswith("csetrain-served v")
        _load_and_compare(uri, run_id, tmp_path / "m")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
