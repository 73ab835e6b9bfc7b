"""Per-pair similarities saved by the STS evaluator (csetrain/eval/pair_scores.py): they
reproduce the logged scores exactly and survive a round trip through the file."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from csetrain.config import ConfigError
from csetrain.eval.pair_scores import load_pair_scores, save_pair_scores
from csetrain.eval.sts import STSEvaluator

SEVEN = ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]


@pytest.fixture(scope="session")
def mini_pack(data_dir, tmp_path_factory) -> Path:
    """The data pack's STS files cut to their first 30 pairs each (same files and subsets)."""
    root = tmp_path_factory.mktemp("mini") / "pack"
    for source in [*data_dir.glob("sts/*/*.tsv"), *data_dir.glob("sts-senteval/*/*.tsv")]:
        target = root / source.relative_to(data_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = source.read_text(encoding="utf-8").splitlines()[:31]
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("protocol", ["senteval", "mteb"])
def test_saved_pairs_reproduce_every_logged_score(mini_pack, tiny_encoder, tmp_path, protocol):
    result = STSEvaluator(SEVEN, protocol=protocol, data_dir=str(mini_pack))(tiny_encoder)
    save_pair_scores(result.pairs, tmp_path / "pair_scores.npz")
    loaded = load_pair_scores(tmp_path / "pair_scores.npz")
    assert (loaded.protocol, loaded.split) == (protocol, "test")
    assert list(loaded.tasks) == SEVEN
    mains = []
    for label, task in loaded.tasks.items():
        assert task.sims.dtype == result.pairs.tasks[label].sims.dtype  # exactly what was ranked
        assert len(task.sims) == len(task.gold) == sum(task.sizes) == result.details["pairs"][label]
        score = 100 * spearmanr(task.sims, task.gold).statistic
        assert score == result.metrics[task.metric_key]  # bit-for-bit the logged number
        mains.append(score)
    assert np.mean(mains) == pytest.approx(result.metrics[loaded.avg_key], abs=1e-12)
    years = loaded.tasks["sts12"]
    assert years.metric_key == f"{protocol}/sts12/spearman_all" and len(years.subsets) == 5
    sick = loaded.tasks["sickr"]
    assert sick.subsets == (["train", "dev", "test"] if protocol == "mteb" else ["test"])


def test_a_file_that_is_not_pair_scores_fails_in_one_line(tmp_path):
    bad = tmp_path / "pair_scores.npz"
    bad.write_text("not a zip")
    with pytest.raises(ConfigError, match="not a csetrain pair-scores file") as err:
        load_pair_scores(bad)
    assert "\n" not in str(err.value)


def test_csetrain_eval_saves_and_logs_the_pairs(mini_pack, tmp_path, mlflow_store):
    from mlflow import MlflowClient

    from .helpers import csetrain_in_process

    uri = mlflow_store(tmp_path / "mlflow.db")
    args = ["model=tiny", "eval=stsb_test", f"paths.data_dir={mini_pack}", "tracking=mlflow"]
    args += [f"tracking.uri={uri}", f"paths.output_dir={tmp_path}/out", "--json"]
    done = csetrain_in_process("eval", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = tmp_path.glob("out/evals/*/*")
    pairs = load_pair_scores(run_dir / "pair_scores.npz")
    metric = f"test/{pairs.tasks['stsb'].metric_key}"
    score = 100 * spearmanr(pairs.tasks["stsb"].sims, pairs.tasks["stsb"].gold).statistic
    assert score == pytest.approx(json.loads(done.stdout.splitlines()[-1])[metric], abs=1e-9)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("csetrain").experiment_id])
    assert "pair_scores.npz" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.data.tags["run_dir"] == str(run_dir.resolve())
