"""Shared fixtures. Everything offline: an accidental download fails fast instead of hanging."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data pack: $CSETRAIN_DATA_DIR, else ../shared/data beside the checkout."""
    path = Path(os.environ.get("CSETRAIN_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (path / "sts").is_dir():
        if os.environ.get("CI"):  # CI always has the data pack: a skip there would hide failures
            pytest.fail(f"data pack not found at {path}; set CSETRAIN_DATA_DIR")
        pytest.skip(f"data pack not found at {path}; set CSETRAIN_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def tiny_backbone():
    from csetrain.modeling.backbones import tiny

    return tiny()


@pytest.fixture
def tiny_encoder():
    """A fresh tiny encoder per test (tests may train it)."""
    from csetrain.modeling.backbones import tiny
    from csetrain.modeling.encoder import SentenceEncoder

    return SentenceEncoder(tiny(), pooler="cls")


@pytest.fixture(scope="session")
def minilm():
    from csetrain.modeling.backbones import minilm_l6
    from csetrain.modeling.encoder import SentenceEncoder

    return SentenceEncoder(minilm_l6(), pooler="mean")


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created once: MLflow builds a new store's schema by running
    every migration, seconds per store, which dozens of tests would otherwise each pay."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


@pytest.fixture
def mlflow_store(_empty_mlflow_db):
    """`mlflow_store(path)`: put a fresh, empty MLflow SQLite store at `path` (a copy of one
    MLflow created at this session's version) and return its `sqlite:///` URI."""

    def make(path) -> str:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_mlflow_db, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture(scope="session", autouse=True)
def _small_sts_pack(tmp_path_factory) -> Path:
    """The small STS-B evaluation pack that end-to-end tests point `paths.data_dir` at."""
    from .helpers import make_small_sts

    return make_small_sts(tmp_path_factory.mktemp("small_sts"))


@pytest.fixture(scope="session")
def trained_2dmse_run(tmp_path_factory, _empty_mlflow_db):
    """(store URI, run id): one tiny 2D-Matryoshka run trained into a SQLite store through the
    CLI, dev-selected, with its start scores; shared by the export tests (test_export.py,
    test_model_flavor.py), which only read it or write beside it."""
    from .helpers import csetrain_in_process, only_run, shared_cache, small_sts

    root = tmp_path_factory.mktemp("trained_2dmse")
    shutil.copyfile(_empty_mlflow_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    proc = csetrain_in_process(
        "train",
        "experiment=demo",
        "model=tiny",
        "objective=2dmse",
        "after_training=[]",  # the layer x size grid is not what these tests read
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "trainer.batch_size=8",
        "trainer.progress=false",
        f"tracking.uri={uri}",
        f"paths.output_dir={root}/out",
        f"paths.data_dir={small_sts()}",
        f"paths.cache_dir={shared_cache()}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    client, run = only_run(uri)
    return uri, run.info.run_id
