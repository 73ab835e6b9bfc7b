"""An exported folder logged with MLflow's `sentence_transformers` flavor into the run that
trained it (so `mlflow.sentence_transformers.load_model(f"runs:/{run_id}/model")` and
`mlflow models serve -m runs:/{run_id}/model` work), optionally registered as a model version
tagged with the run's metrics; and export-time scores logged back onto that run."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from csetrain.app.store.tracker import connect, log_metric_batch
from csetrain.config import ConfigError, TrackingConfig

MODEL_NAME = "model"  # runs:/<run id>/model
INPUT_EXAMPLE = ["A sentence to embed.", "Another, longer sentence to embed with it."]
TAGGED_METRICS = ("test/", "eval/best")  # what a registered version carries as tags


def log_st_model(
    uri: str, run: dict, folder: Path, register_as: str | None = None
) -> dict[str, str]:
    """Log `folder` (a sentence-transformers folder) to `run` with the flavor: signature inferred
    from the model's output on an input example, which is saved too. Returns {model_uri,
    registered: "<name> v<version>" or ""}."""
    import mlflow
    from mlflow.models import infer_signature
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    signature = infer_signature(INPUT_EXAMPLE, model.encode(INPUT_EXAMPLE))
    connect(TrackingConfig(uri=uri))  # a SQLite store: checked and migrated under the lock
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with warnings.catch_warnings(), _quiet_mlflow():
            warnings.simplefilter("ignore")
            # The run stays as it ended: MLflow resumes it for the upload and ends it again with
            # the status it had (FINISHED).
            with mlflow.start_run(run_id=run["id"]):
                info = mlflow.sentence_transformers.log_model(
                    model,
                    name=MODEL_NAME,
                    signature=signature,
                    input_example=INPUT_EXAMPLE,
                    registered_model_name=register_as,
                    # the flavor's pinned requirements; inferring them loads the model again
                    # in a subprocess (tens of seconds) to find the same list
                    pip_requirements=mlflow.sentence_transformers.get_default_pip_requirements(),
                )
            mlflow.MlflowClient(uri).set_terminated(run["id"], run["status"])
    finally:
        mlflow.set_tracking_uri(previous)
    registered = ""
    if register_as:
        version = info.registered_model_version
        tag_version(uri, register_as, str(version), run)
        registered = f"{register_as} v{version}"
    return {"model_uri": f"runs:/{run['id']}/{MODEL_NAME}", "registered": registered}


def tag_version(uri: str, name: str, version: str, run: dict) -> None:
    """The registered version carries the run's test and selection metrics and its run id."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    tags = {k: f"{v:.4f}" for k, v in run["metrics"].items() if k.startswith(TAGGED_METRICS)}
    tags.update(
        {"csetrain.run_id": run["id"], "eval.protocol": run["tags"].get("eval.protocol", "")}
    )
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def version_tags(uri: str, name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient(uri).get_model_version(name, version).tags)


def log_export_scores(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Scores measured at export (ONNX fp32/int8 on the test set) onto the run, so the card,
    read from the run, shows them."""
    client, _ = connect(TrackingConfig(uri=uri))
    log_metric_batch(client, run_id, metrics, step)


def check_run_store(uri: str, run_id: str) -> None:
    """Fail before any work if the run is not in the store the export would log to."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(f"run {run_id} is not in {uri}: pass --uri of its store") from None


class _quiet_mlflow:
    """MLflow logs INFO/WARNING chatter (pip requirement inference, progress) per log_model."""

    def __enter__(self):
        self.level = logging.getLogger("mlflow").level
        logging.getLogger("mlflow").setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logging.getLogger("mlflow").setLevel(self.level)
