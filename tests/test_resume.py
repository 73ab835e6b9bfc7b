"""Exact resume: a run stopped by SIGTERM mid-way and resumed with trainer.resume=auto ends with
bitwise the same weights, in the same MLflow run, as an uninterrupted run.

Bitwise equality is machine-independent here: both runs execute the identical sequence of
operations on identically shaped tensors in one process (same seeds, same batches, same kernels
and thread count), and the resumed run restores weights, optimizer, scheduler and RNG states
exactly, so no summation order differs between the two."""

import os

import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file

from csetrain.app.train import train
from csetrain.checkpoint import Checkpointer
from csetrain.config import ConfigError
from csetrain.loop import Interrupted

from .helpers import shared_cache, sigterm_at_step, small_sts
from .test_config import _compose


def _cfg(tmp_path, name, extra=()):
    return _compose(
        [
            "experiment=demo",
            "model=tiny",
            "trainer.max_steps=6",
            "trainer.batch_size=8",
            "trainer.eval_every=0",
            "trainer.save_every=1",
            "trainer.log_every=1",
            "trainer.progress=false",
            "tracking.log_model=false",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"paths.output_dir={tmp_path}/{name}",
            f"paths.data_dir={small_sts()}",  # evaluation data: STS-B cut to 200 pairs
            f"paths.cache_dir={shared_cache()}",  # sample tokens, start scores: once
            *extra,
        ]
    )


@pytest.fixture(autouse=True)
def _store(tmp_path, mlflow_store):
    mlflow_store(tmp_path / "mlflow.db")  # the store _cfg names, empty


def _weights(summary):
    return load_file(os.path.join(summary.run_dir, "checkpoints", "best", "model.safetensors"))


@pytest.mark.parametrize(
    "objective", ["simcse_unsup", "esimcse"]
)  # esimcse: queue + momentum state
def test_sigterm_then_resume_is_bitwise_identical(tmp_path, monkeypatch, objective):
    straight = train(_cfg(tmp_path, "straight", [f"objective={objective}"]))

    restore = sigterm_at_step(monkeypatch, 3)  # a real SIGTERM, delivered mid-run
    with pytest.raises(Interrupted, match="after step 3"):
        train(_cfg(tmp_path, "resumed", [f"objective={objective}"]))
    restore()

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("csetrain-demo").experiment_id
    killed = [r for r in client.search_runs([experiment]) if r.info.status == "KILLED"]
    assert len(killed) == 1

    resumed = train(_cfg(tmp_path, "resumed", [f"objective={objective}", "trainer.resume=auto"]))
    assert resumed.run_id == killed[0].info.run_id  # same MLflow run, continued
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)  # bitwise
    losses = [
        m.value
        for m in sorted(
            client.get_metric_history(resumed.run_id, "train/loss"), key=lambda m: m.step
        )
    ]
    straight_losses = [
        m.value
        for m in sorted(
            client.get_metric_history(straight.run_id, "train/loss"), key=lambda m: m.step
        )
    ]
    assert losses == straight_losses  # every step logged once, same values
    assert not (Checkpointer(resumed.run_dir).last_dir).exists()  # state removed once finished


def test_resume_auto_without_a_candidate_starts_fresh(tmp_path):
    summary = train(_cfg(tmp_path, "fresh", ["trainer.resume=auto", "trainer.max_steps=2"]))
    assert summary.metrics["train/seconds"] > 0


def test_resume_from_a_run_dir_without_state_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.resume=.*has no checkpoints/last/"):
        train(_cfg(tmp_path, "x", [f"trainer.resume={tmp_path}"]))


def test_corrupt_state_names_the_checkpoint(tmp_path, tiny_encoder):
    import torch

    checkpointer = Checkpointer(tmp_path / "run")
    objective = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(tiny_encoder.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    checkpointer.save_state(
        1, tiny_encoder, objective, optimizer, scheduler, {}, {"config_hash": "x"}
    )
    (checkpointer.last_dir / "encoder.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=r"checkpoint .*last is corrupt.*trainer.resume=never"):
        checkpointer.load_state(tiny_encoder, objective, optimizer, scheduler)


@pytest.mark.slow
def test_resume_with_lora_adapters_is_bitwise_identical(tmp_path, monkeypatch):
    """A tiny decoder with LoRA: the resume state holds the adapters (not the frozen base), and
    the resumed run ends with bitwise the merged weights of an uninterrupted one."""
    extra = [
        "model=tiny_decoder",
        "model.pooler=last_token",  # the demo experiment sets cls
        "model.lora={r:4,alpha:8,dropout:0.1}",
        "trainer.lr=1e-3",
    ]
    straight = train(_cfg(tmp_path, "straight", extra))
    restore = sigterm_at_step(monkeypatch, 3)
    with pytest.raises(Interrupted, match="after step 3"):
        train(_cfg(tmp_path, "resumed", extra))
    restore()
    (last,) = (tmp_path / "resumed").glob("runs/*/checkpoints/last/encoder.safetensors")
    state = load_file(str(last))
    assert state and all("lora_" in k for k in state)  # adapters only
    resumed = train(_cfg(tmp_path, "resumed", [*extra, "trainer.resume=auto"]))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)  # bitwise
    base = load_file(os.path.join(straight.run_dir, "checkpoints", "best", "model.safetensors"))
    assert not any("lora" in k for k in base)  # the exported model is merged
