"""hparams_search=optuna: an Optuna study as a Hydra multirun, maximising the dev metric that
run_training returns, every trial a child of one parent MLflow run; the SLURM preset composes."""

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from csetrain.app.settings import config_dir, register_resolvers

from .helpers import csetrain_in_process, shared_cache, small_sts


def test_optuna_study_runs_trials_as_child_runs(tmp_path, mlflow_store):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs csetrain[sweep]")
    uri = mlflow_store(tmp_path / "mlflow.db")
    args = [
        "train",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "experiment=demo",
        "model=tiny",
        "trainer.max_steps=2",
        "trainer.eval_every=2",
        "trainer.batch_size=8",
        "trainer.progress=false",
        "tracking.log_model=false",
        f"tracking.uri={uri}",
        f"paths.output_dir={tmp_path}/out",
        f"paths.data_dir={small_sts()}",  # evaluation data: STS-B cut to 200 pairs
        f"paths.cache_dir={shared_cache()}",  # sample tokens, start scores: once
    ]
    proc = csetrain_in_process(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("csetrain-demo").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("csetrain.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    lrs = {r.data.params["trainer.lr"] for r in trials}
    assert len(lrs) == 2  # the sampler proposed different points
    assert parent.data.metrics["sweep/best"] == pytest.approx(
        max(r.data.metrics["eval/best"] for r in trials)
    )
    assert (
        "Best parameters" in proc.stdout
        or "best_params" in proc.stdout
        or (tmp_path / "out").exists()
    )


def test_slurm_launcher_preset_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs csetrain[slurm]")
    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == 1 and cfg.hydra.callbacks.mlflow_sweep
