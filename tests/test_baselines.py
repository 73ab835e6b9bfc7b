"""Published baselines (csetrain/baselines.py): our evaluators' metric keys, the papers' numbers,
and reference runs that are written once however often the command runs."""

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from csetrain.app.cli import app
from csetrain.app.reports import baselines
from csetrain.app.reports.baselines import (
    MTEB_NAMES,
    TASKS,
    published,
    reference_runs,
    reference_scores,
)
from csetrain.app.store.references import write_reference_runs
from csetrain.config import ConfigError, TrackingConfig
from csetrain.eval.sts import STSEvaluator

from .test_pair_scores import SEVEN, mini_pack  # noqa: F401 (fixture)


@pytest.mark.parametrize("protocol", ["senteval", "mteb"])
def test_reference_keys_are_the_keys_our_evaluator_logs(mini_pack, tiny_encoder, protocol):  # noqa: F811
    logged = STSEvaluator(SEVEN, protocol=protocol, data_dir=str(mini_pack))(tiny_encoder)
    ours = set(logged.prefixed("test"))
    refs = reference_scores(protocol)
    assert refs, f"no {protocol} baselines"
    for label, scores in refs.items():
        native = {k for k in scores if not k.endswith("/cosine_spearman")}
        assert native <= ours, (label, native - ours)
    full = next(s for s in refs.values() if len(s) > 2)  # a table with every task
    headline = {f"test/{p.metric_key}" for p in logged.pairs.tasks.values()}
    assert {k for k in full if not k.endswith("/cosine_spearman")} == headline | {
        f"test/{logged.pairs.avg_key}"
    }


def test_mteb_keys_follow_the_mteb_evaluator(data_dir, tiny_encoder, tmp_path):
    from csetrain.eval.mteb import MTEBEvaluator

    assert MTEB_NAMES == {
        "sts12": "STS12",
        "sts13": "STS13",
        "sts14": "STS14",
        "sts15": "STS15",
        "sts16": "STS16",
        "stsb": "STSBenchmark",
        "sickr": "SICK-R",
    }
    pack = tmp_path / "sts" / "stsb"  # 20 STS-B pairs: enough for mteb to name its metrics
    pack.mkdir(parents=True)
    lines = (data_dir / "sts" / "stsb" / "test.tsv").read_text(encoding="utf-8").splitlines()
    (pack / "test.tsv").write_text("\n".join(lines[:21]) + "\n", encoding="utf-8")
    result = MTEBEvaluator(["STSBenchmark"], str(tmp_path))(tiny_encoder)
    assert "test/mteb/STSBenchmark/cosine_spearman" in result.prefixed("test")
    assert (
        reference_scores("mteb")["all-MiniLM-L6-v2"]["test/mteb/STSBenchmark/cosine_spearman"]
        == 82.03
    )


def test_numbers_are_the_papers():
    senteval = reference_scores("senteval")
    simcse = senteval["SimCSE-unsup BERT-base"]
    assert simcse["test/senteval/sts12/spearman_all"] == 68.40  # SimCSE Table 5
    assert simcse["test/senteval/sickr/spearman"] == 72.23
    assert simcse["test/senteval/avg/spearman"] == 76.25
    assert senteval["DebCSE BERT-base"] == {"test/senteval/avg/spearman": 80.33}  # average only
    assert reference_scores("mteb")["all-mpnet-base-v2"]["test/mteb/avg/cosine_spearman"] == 80.54


def test_every_full_table_averages_to_its_published_average():
    """A mistyped cell would break this: each paper's avg is the mean of its 7 rounded cells."""
    for entries in published().values():
        for entry in entries:
            scores = entry["scores"]
            if set(scores) == {*TASKS, "avg"}:
                assert np.mean([scores[t] for t in TASKS]) == pytest.approx(
                    scores["avg"], abs=0.006
                ), entry["label"]


def test_reference_runs_are_written_once(tmp_path, mlflow_store):
    uri = mlflow_store(tmp_path / "mlflow.db")
    runner = CliRunner()
    first = runner.invoke(app, ["runs", "baselines", "--uri", uri, "-e", "refs"])
    assert first.exit_code == 0, first.output
    assert first.output.count("created") == len(reference_runs())
    second = runner.invoke(app, ["runs", "baselines", "--uri", uri, "-e", "refs"])
    assert second.exit_code == 0 and second.output.count("unchanged") == len(reference_runs())

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("refs").experiment_id])
    assert len(runs) == len(reference_runs())
    by_key = {r.data.tags["csetrain.reference_key"]: r for r in runs}
    simcse = by_key["senteval/SimCSE-unsup BERT-base"]
    assert simcse.info.status == "FINISHED"
    assert simcse.data.tags["csetrain.reference"] == "true"
    assert simcse.data.tags["eval.protocol"] == "senteval"
    assert simcse.data.tags["source"].startswith("arXiv:2104.08821")
    assert simcse.data.metrics == reference_scores("senteval")["SimCSE-unsup BERT-base"]


def test_a_corrected_number_updates_the_same_run(tmp_path, mlflow_store):
    cfg = TrackingConfig(uri=mlflow_store(tmp_path / "mlflow.db"), experiment="refs")
    refs = reference_runs()[:1]
    ((run_id, _),) = write_reference_runs(cfg, refs)
    key = next(iter(refs[0]["metrics"]))
    refs[0]["metrics"][key] += 1
    assert write_reference_runs(cfg, refs) == [(run_id, "updated")]
    client = MlflowClient(cfg.uri)
    assert len(client.search_runs([client.get_experiment_by_name("refs").experiment_id])) == 1
    assert client.get_run(run_id).data.metrics[key] == refs[0]["metrics"][key]


def test_a_bad_data_file_fails_in_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "published_baselines.yaml"
    bad.write_text("senteval:\n  - {label: X, scores: {sts17: 70.0}}\n")
    monkeypatch.setattr(baselines, "BASELINES_FILE", bad)
    published.cache_clear()
    try:
        with pytest.raises(ConfigError, match="unknown tasks \\['sts17'\\]"):
            published()
        with pytest.raises(ConfigError, match="choose from"):
            reference_scores("glue")
    finally:
        published.cache_clear()
