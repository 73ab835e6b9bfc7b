"""A sweep through the CLI: parent/child MLflow runs, a failing job recorded FAILED while the
others finish, and a re-run that only executes what is missing."""

import json
import statistics

import pytest
from mlflow import MlflowClient

from .helpers import csetrain_in_process, shared_cache, small_sts


@pytest.fixture(autouse=True)
def _store(tmp_path, mlflow_store):
    mlflow_store(tmp_path / "mlflow.db")  # the store _sweep names, empty


def _sweep(tmp_path, *overrides):
    args = [
        "train",
        "-m",
        "experiment=demo",
        "model=tiny",
        "trainer.max_steps=2",
        "trainer.eval_every=0",
        "trainer.progress=false",
        "tracking.log_model=false",
        *overrides,
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"paths.output_dir={tmp_path}/out",
        f"paths.data_dir={small_sts()}",  # evaluation data: STS-B cut to 200 pairs
        f"paths.cache_dir={shared_cache()}",  # sample tokens, start scores: once
    ]
    return csetrain_in_process(*args)


def test_sweep_parent_children_failure_and_resume(tmp_path):
    first = _sweep(
        tmp_path, "trainer.batch_size=4,9999,8"
    )  # 9999 > the 4,000-sentence sample: that job fails
    assert first.returncode == 1, first.stderr[-2000:]
    assert "1 job(s) failed" in first.stderr and "trainer.batch_size=9999 exceeds" in first.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("csetrain-demo").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if r.data.tags.get("csetrain.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 3
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED", "FINISHED"]
    assert (
        parents[0].data.metrics["sweep/finished"] == 2
        and parents[0].data.metrics["sweep/failed"] == 1
    )
    assert "seed statistics: none (jobs differ in trainer.batch_size" in first.stdout
    assert not any(k.startswith("seeds/") for k in parents[0].data.metrics)

    again = _sweep(tmp_path, "trainer.batch_size=4,9999,8")
    assert again.stdout.count("skip: this job's config already finished") == 2
    runs = client.search_runs([experiment])
    assert len([r for r in runs if r.data.tags.get("csetrain.kind") == "sweep"]) == 1  # reopened
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.status for r in children) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]


def test_seed_sweep_parent_holds_seed_statistics(tmp_path):
    result = _sweep(tmp_path, "trainer.batch_size=8", "trainer.seed=1,2,3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "seed statistics over 3 finished jobs (0 not finished" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("csetrain-demo").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("csetrain.kind") == "sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    key = "test/senteval/stsb/spearman"
    values = [c.data.metrics[key] for c in children]
    stats = parent.data.metrics
    assert stats["seeds/n"] == 3
    assert stats[f"seeds/{key}/mean"] == pytest.approx(statistics.mean(values))
    assert stats[f"seeds/{key}/std"] == pytest.approx(statistics.stdev(values))
    assert (
        stats[f"seeds/{key}/ci_low"] <= stats[f"seeds/{key}/mean"] <= stats[f"seeds/{key}/ci_high"]
    )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "seeds")}
    assert artifacts == {"seeds/seed_statistics.md", "seeds/seed_statistics.json"}
    table = json.loads(next(tmp_path.glob("out/multirun/*/*/seed_statistics.json")).read_text())
    assert table[key]["method"] == "seeds+pairs"  # the children saved their per-pair cosines


def test_jobs_failing_validation_are_failed_children(tmp_path):
    # refused before a run of their own exists (trainer.lr must be a number): still counted
    result = _sweep(tmp_path, "trainer.batch_size=8", "trainer.lr=abc,xyz")
    assert result.returncode != 0 and "trainer.lr" in result.stderr
    assert "sweep: 0 finished, 2 failed of 2 jobs" in result.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("csetrain-demo").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("csetrain.kind") == "sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    failed = [r.info.run_name for r in children if r.info.status == "FAILED"]
    assert len(failed) == 2 and {"lr=abc" in n for n in failed} == {True, False}
    assert all("trainer.lr" in r.data.tags["csetrain.error"] for r in children)
    assert parent.data.metrics["sweep/failed"] == 2 and parent.info.status == "FAILED"
