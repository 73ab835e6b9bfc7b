"""fit(): the training loop. batch -> objective -> backward -> step -> schedule -> upkeep ->
log on cadence -> dev-eval + best checkpoint on cadence -> stop. Counted in steps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from csetrain.config import CsetrainError
from csetrain.grad_cache import grad_cache_step


class TrainingDiverged(CsetrainError):
    """The loss became NaN/inf; the best checkpoint written so far is kept."""


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


@dataclass
class FitResult:
    best_metric: float
    best_step: int
    steps: int
    train_seconds: float
    history: list[dict] = field(default_factory=list)  # dev evaluations


def _evaluate(c: Components, step: int, best: FitResult) -> None:
    """Dev evaluation; keep the checkpoint only if it beats the best so far."""
    result = c.evaluator(c.encoder)
    c.tracker.log_metrics(result.prefixed("eval"), step)
    best.history.append({"step": step, "primary": result.primary, **result.metrics})
    if result.primary > best.best_metric:
        best.best_metric, best.best_step = result.primary, step
        c.checkpointer.save_best(c.encoder, step, f"eval/{result.primary_key}", result.primary)
    c.encoder.train()


def _forward_backward(c: Components, batch, chunk_size: int):
    if chunk_size:
        return grad_cache_step(c.objective, c.encoder, batch, chunk_size, c.runtime)
    with c.runtime.autocast():
        out = c.objective(c.encoder, batch)
    c.runtime.backward(out.loss)
    return out


def fit(c: Components, cfg) -> FitResult:
    """Train for cfg.max_steps steps; return the best dev metric and where it was reached."""
    result = FitResult(best_metric=-math.inf, best_step=-1, steps=cfg.max_steps, train_seconds=0.0)
    params = [
        p for p in list(c.encoder.parameters()) + list(c.objective.parameters()) if p.requires_grad
    ]
    token_rows = c.dataset.select_columns(c.collator.columns)
    if cfg.eval_every:
        _evaluate(c, 0, result)  # the starting point, so "before -> after" is in every run
    c.encoder.train()
    bar = tqdm(range(cfg.max_steps), desc="train", disable=not cfg.progress, dynamic_ncols=True)
    started, window_start, window_sentences = time.perf_counter(), time.perf_counter(), 0
    for step in bar:
        rows = token_rows[c.sampler.indices(step)]
        batch = c.collator(rows, step).to(c.runtime.device, non_blocking=True)
        out = _forward_backward(c, batch, cfg.grad_cache.chunk_size)
        grad_norm = c.runtime.step(c.optimizer, params)
        c.scheduler.step()
        c.objective.after_optimizer_step(c.encoder, batch)
        window_sentences += batch.size
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            loss = out.loss.item()  # the only sync point, on the logging cadence
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss} at step {done}: lower trainer.lr or check the data; the best checkpoint so far is kept"
                )
            elapsed = time.perf_counter() - window_start
            metrics = {
                "train/loss": loss,
                "train/lr": c.scheduler.get_last_lr()[0],
                "train/epoch": c.sampler.epoch_of(done),
                "train/sentences_per_s": window_sentences / elapsed,
            }
            metrics.update({f"train/{k}": v.item() for k, v in out.metrics.items()})
            if grad_norm is not None:
                metrics["train/grad_norm"] = grad_norm.item()
            c.tracker.log_metrics(metrics, done)
            bar.set_postfix(loss=f"{loss:.4f}")
            window_start, window_sentences = time.perf_counter(), 0
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.max_steps):
            _evaluate(c, done, result)
    result.train_seconds = time.perf_counter() - started
    return result
