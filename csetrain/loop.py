"""fit(): the training loop. batch -> objective -> backward -> step -> schedule -> upkeep ->
log on cadence -> dev-eval + best checkpoint on cadence -> stop. Counted in steps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from csetrain.config import CsetrainError
from csetrain.data.mix import source_metrics
from csetrain.runtime import stop_requests


class TrainingDiverged(CsetrainError):
    """The loss became NaN/inf; the best checkpoint written so far is kept."""


class Interrupted(CsetrainError):
    """SIGTERM/SIGINT: the state was saved after the current step."""


@dataclass
class Components:
    """Everything fit() drives, assembled by train.py."""

    encoder: torch.nn.Module
    objective: torch.nn.Module
    dataset: object  # tokenized `datasets.Dataset`
    sampler: object  # StepSampler
    collator: object  # Collator
    runtime: object  # Runtime
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    evaluator: object  # dev STSEvaluator
    checkpointer: object
    tracker: object
    meta: dict = field(
        default_factory=dict
    )  # saved with each state checkpoint (config hash, run id)


@dataclass
class FitResult:
    best_metric: float
    best_step: int
    steps: int
    train_seconds: float
    history: list[dict] = field(default_factory=list)  # dev evaluations


def _evaluate(c: Components, step: int, best: FitResult) -> None:
    """Dev evaluation; keep the checkpoint only if it beats the best so far (rank 0 only; under
    trainer.fsdp every rank first helps gather the weights rank 0 evaluates)."""
    encoder = unsharded(c)
    if not c.runtime.is_main:
        return
    result = c.evaluator(encoder)
    c.tracker.log_metrics(result.prefixed("eval"), step)
    best.history.append({"step": step, "primary": result.primary, **result.metrics})
    if result.primary > best.best_metric:
        best.best_metric, best.best_step = result.primary, step
        c.checkpointer.save_best(encoder, step, f"eval/{result.primary_key}", result.primary)
    c.encoder.train()


def _log_step(c: Components, out, grad_norm, done: int, window: dict) -> float:
    """Train metrics on the logging cadence; the only `.item()` sync points of the loop."""
    loss = out.loss.item()
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"loss is {loss} at step {done}: lower trainer.lr or check the data; the last good checkpoint is kept"
        )
    elapsed = time.perf_counter() - window["start"]
    metrics = {
        "train/loss": loss,
        "train/lr": c.scheduler.get_last_lr()[0],
        "train/epoch": c.sampler.epoch_of(done),
        "train/sentences_per_s": window["sentences"] / elapsed,
    }
    metrics.update({f"train/{k}": v.item() for k, v in out.metrics.items()})
    metrics.update(source_metrics(c.sampler, window.pop("sources", {}), done))  # data=mix
    if grad_norm is not None:
        metrics["train/grad_norm"] = grad_norm.item()
    c.tracker.log_metrics(metrics, done)
    window.update(start=time.perf_counter(), sentences=0)
    return loss


def unsharded(c: Components):
    """The encoder as rank 0 can run it alone: itself, or under trainer.fsdp the gathered copy
    (a collective: every rank calls this)."""
    return c.checkpointer.gathered(c.encoder) if _collective(c) else c.encoder


def _collective(c: Components) -> bool:
    """trainer.fsdp's checkpointer: every rank saves its shards and gathers for evaluation."""
    return getattr(c.checkpointer, "collective", False)


def _save_state(c: Components, done: int, result: FitResult, out) -> None:
    if not c.runtime.is_main and not _collective(c):
        return
    if not math.isfinite(out.loss.item()):  # never overwrite the last good state with NaNs
        raise TrainingDiverged(
            f"loss is not finite at step {done}: the last good checkpoint is kept"
        )
    progress = {
        "best_metric": result.best_metric,
        "best_step": result.best_step,
        "history": result.history,
    }
    c.checkpointer.save_state(
        done, c.encoder, c.objective, c.optimizer, c.scheduler, progress, c.meta
    )


def fit(c: Components, cfg, start_step: int = 0, resumed: dict | None = None) -> FitResult:
    """Train from `start_step` to cfg.max_steps; return the best dev metric and its step.

    A SIGTERM/SIGINT finishes the current step, saves the full state and raises `Interrupted`.
    """
    result = FitResult(best_metric=-math.inf, best_step=-1, steps=cfg.max_steps, train_seconds=0.0)
    if resumed:
        result.best_metric, result.best_step = resumed["best_metric"], resumed["best_step"]
        result.history = list(resumed["history"])
    params = [
        p for p in list(c.encoder.parameters()) + list(c.objective.parameters()) if p.requires_grad
    ]
    token_rows = c.dataset.select_columns(c.collator.columns)
    if cfg.eval_every and start_step == 0:
        _evaluate(c, 0, result)  # the starting point, so "before -> after" is in every run
    c.encoder.train()
    save_every = cfg.save_every or cfg.eval_every
    steps = range(start_step, cfg.max_steps)
    bar = tqdm(
        steps,
        desc="train",
        disable=not cfg.progress,
        dynamic_ncols=True,
        initial=start_step,
        total=cfg.max_steps,
    )
    started, window = time.perf_counter(), {"start": time.perf_counter(), "sentences": 0}
    with stop_requests() as stop:
        for step in bar:
            # the global batch, sharded per rank; an objective may re-draw its rows (MCL)
            rows = token_rows[c.objective.batch_indices(step, c.sampler.indices(step))]
            batch = c.runtime.move(c.collator(rows, step).shard(c.runtime.rank, c.runtime.world))
            with c.runtime.autocast():
                out = c.objective(c.encoder, batch)  # GradCache and regularizers wrap it
            c.runtime.backward(out.loss)
            grad_norm = c.runtime.step(c.optimizer, params)
            c.scheduler.step()
            c.objective.after_optimizer_step(c.encoder, batch)
            window["sentences"] += batch.size
            if batch.source:  # data=mix: each source's losses over the logging window
                window.setdefault("sources", {}).setdefault(batch.source, []).append(
                    out.loss.detach()
                )
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                bar.set_postfix(loss=f"{_log_step(c, out, grad_norm, done, window):.4f}")
            if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.max_steps):
                _evaluate(c, done, result)
            if stop.signal is not None or (
                save_every and done % save_every == 0 and done < cfg.max_steps
            ):
                _save_state(c, done, result, out)
            if stop.signal is not None:
                raise Interrupted(
                    f"stopped by {stop.name} after step {done}; state saved, continue with trainer.resume=auto"
                )
    result.train_seconds = time.perf_counter() - started
    return result
