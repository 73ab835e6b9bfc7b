"""Helpers shared by tests that drive the real `csetrain` command."""

import contextlib
import logging
import subprocess
import sys


def csetrain_cli(*args: str, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `csetrain ARGS` in a fresh interpreter, as a user would; output captured as text."""
    cmd = [sys.executable, "-m", "csetrain", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)


@contextlib.contextmanager
def _logging_restored():
    """Put back every logger's handlers, level, propagation and disabled flag on exit."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    loggers = [lg for lg in loggers if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    known = {id(lg) for lg in loggers}
    try:
        yield
    finally:
        for lg, handlers, level, propagate, disabled in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
        for lg in logging.Logger.manager.loggerDict.values():  # loggers made during the call
            if isinstance(lg, logging.Logger) and id(lg) not in known:
                lg.handlers[:] = []


def csetrain_in_process(*args: str) -> subprocess.CompletedProcess:
    """Run `csetrain ARGS` in this interpreter (typer's test runner), as `csetrain_cli` reports
    it: exit code, stdout, stderr. A fresh interpreter costs ~10 s of imports on 2 cores; tests
    of the command's own handling use this, and a few keep `csetrain_cli` for the real entry
    point. An exception the command did not turn into an exit code propagates (where a
    subprocess would print a traceback). Hydra configures logging for its jobs, with handlers
    on the runner's streams, which close after the call: the logging state is put back."""
    from typer.testing import CliRunner

    from csetrain.app.cli import app

    with _logging_restored():
        result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


# STS-B pairs kept per split in the small evaluation pack (the bundled sample has 1,500 dev and
# 1,379 test pairs): enough for a Spearman that moves with training.
SMALL_STS_PAIRS = 200
_small_sts: list = []


def make_small_sts(root):
    """Write the bundled sample's STS-B dev and test files, cut to their first SMALL_STS_PAIRS
    pairs, into a folder under `root` (a `paths.data_dir` for evaluation) that `small_sts()`
    returns; `shared_cache()` is another folder under `root`.

    End-to-end tests evaluate at the start, at every `eval_every` and at the end; on the full
    sample those encodings are most of a tiny run's time, and none of their assertions needs
    more pairs. Tests of the evaluation itself keep the full sets."""
    from pathlib import Path

    from csetrain.config import ASSETS_DIR

    root = Path(root)
    pack = root / "sts_pack"
    for split in ("dev", "test"):
        source = ASSETS_DIR / "sample" / "sts" / "stsb" / f"{split}.tsv"
        lines = source.read_text(encoding="utf-8").splitlines()
        target = pack / "sts" / "stsb" / f"{split}.tsv"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(lines[: SMALL_STS_PAIRS + 1]) + "\n", encoding="utf-8")
    _small_sts[:] = [root]
    return pack


def small_sts():
    """The small STS-B pack of this session (made by the session fixture in conftest.py)."""
    assert _small_sts, "the session fixture _small_sts_pack has not run"
    return _small_sts[0] / "sts_pack"


def shared_cache():
    """One `paths.cache_dir` for the session's end-to-end runs, as a user's runs share
    outputs/cache: the sample is tokenized once, and runs from the same tiny start model score
    it once (both caches are keyed by content: corpus and tokenizer; weights and eval config)."""
    assert _small_sts, "the session fixture _small_sts_pack has not run"
    return _small_sts[0] / "cache"


def sigterm_at_step(monkeypatch, step: int = 3):
    """Deliver a real SIGTERM to this process once the run logs `step`'s training loss (from
    inside the tracker, so mid-run); returns a function that takes the patch back out."""
    import os
    import signal

    from csetrain.app.store.tracker import MlflowTracker

    original = MlflowTracker.log_metrics

    def kill_at_step(self, metrics, at):
        original(self, metrics, at)
        if at == step and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(MlflowTracker, "log_metrics", kill_at_step)
    return lambda: monkeypatch.setattr(MlflowTracker, "log_metrics", original)


def only_run(uri: str, experiment: str = "csetrain-demo"):
    """(client, run): the one MLflow run of `experiment` in the store at `uri` (fails if not one)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def negative_rows(tokenizer, texts, fields, tails) -> dict:
    """Token-id columns of a k-negative batch: anchors `texts`, positives the reversed texts,
    hard negative i each text + tails[i] (distinct from every anchor and positive)."""
    return {
        "anchor_ids": tokenizer(texts)["input_ids"],
        "positive_ids": tokenizer(texts[::-1])["input_ids"],
        **{
            f"{field}_ids": tokenizer([t + tail for t in texts])["input_ids"]
            for field, tail in zip(fields, tails)
        },
    }


@contextlib.contextmanager
def sharded_linear():
    """An nn.Linear whose weight is an FSDP2-style DTensor shard (a world-size-1 gloo group, in
    process), for code that must leave sharded weights alone."""
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        layer = nn.Linear(8, 4)
        shard = distribute_tensor(layer.weight.detach(), DeviceMesh("cpu", [0]), [Shard(0)])
        layer.weight = nn.Parameter(shard)
        yield layer
    finally:
        dist.destroy_process_group()
