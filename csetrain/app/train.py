"""run_training(cfg) -> float: assemble the components a config names, fit, then test the
selected checkpoint once, returning the dev selection metric (what sweepers maximise).
`train(cfg)` is the same run returning its whole summary (the CLI prints it)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from csetrain.app.components import (
    AFTER_TRAINING,
    after_training,
    build_objective,
    check_fields,
    dev_evaluator,
    load_data,
)
from csetrain.app.compose import sweep_dir
from csetrain.app.context import RunContext, RunSummary, check_writable
from csetrain.app.mix import mixed_sources
from csetrain.app.reports.plots import (
    METRIC_LOG,
    START_FILE,
    MetricLog,
    never_fail,
    published_references,
    score_start,
    write_run_plots,
)
from csetrain.app.resume import finished_before, resume_target
from csetrain.app.settings import config_hash, instantiate
from csetrain.app.store.tracker import end_run
from csetrain.app.sweep import failed_job_recorded, parent_run_id
from csetrain.checkpoint import Checkpointer, write_text_atomic
from csetrain.config import Settings
from csetrain.data.cache import tokenized_dataset
from csetrain.data.collate import Collator, StepSampler
from csetrain.data.hard_negatives import expand_roles
from csetrain.data.sources import Corpus
from csetrain.eval.pair_scores import FILE_NAME as PAIR_SCORES
from csetrain.eval.pair_scores import save_pair_scores
from csetrain.loop import Components, Interrupted, fit, unsharded
from csetrain.modeling.prompts import carry_prompts
from csetrain.runtime import Runtime, free_memory, init_distributed, lr_lambda, seed_everything


def training_collator(cfg: DictConfig, objective, corpus: Corpus, tokenizer, seed: int) -> Collator:
    """The collator of the fields the objective and its miner read, with the augmentation."""
    wanted = objective.data_fields + tuple(
        f for f in objective.miner.fields if f not in objective.data_fields
    )
    return Collator(
        data_fields=expand_roles(wanted, corpus.fields),
        augmentation=instantiate(cfg.augmentation),
        pad_id=tokenizer.pad_token_id,
        special_ids=set(tokenizer.all_special_ids),
        augmented_positive=objective.augmented_positive,
        seed=seed,
        tokenizer=tokenizer,
        max_length=corpus.max_length,
    )


def build(
    cfg: DictConfig, settings: Settings, run_dir: Path, tracker
) -> tuple[Components, dict[str, str]]:
    """Every component fit() drives, and the tags that describe the data and model."""
    trainer, runtime = settings.trainer, Runtime(settings.trainer)
    encoder = runtime.prepare(instantiate(cfg.model), trainer.compile, trainer.packing)
    if trainer.gradient_checkpointing:
        encoder.checkpoint_activations()
    objective = build_objective(cfg, runtime).to(runtime.device)
    tokenizer = encoder.tokenizer
    mix = mixed_sources(
        cfg, objective, tokenizer, settings
    )  # data=mix (docs/data-mix.md), else None
    corpus = mix.corpus if mix else load_data(cfg.data)
    check_fields(objective, corpus)
    carry_prompts(encoder, corpus.prompts)  # saved with the model; dev evaluation applies them
    dataset = mix.rows if mix else tokenized_dataset(corpus, tokenizer, settings.paths.cache_dir)
    # Before the optimizer and any resume: momentum copies start from these weights, heads the
    # binding creates get optimized, corpus-reading miners take the tokenized rows.
    objective.bind(encoder, dataset)
    objective.to(runtime.device)
    checkpointer = Checkpointer(run_dir)
    if trainer.fsdp:  # after bind (momentum copies start unsharded), before the optimizer
        from csetrain.sharding import sharded_run

        fresh = lambda: instantiate(cfg.model)  # noqa: E731 - rank 0's unsharded copy
        checkpointer = sharded_run(encoder, objective, checkpointer, fresh, runtime.device)
    collator = training_collator(cfg, objective, corpus, tokenizer, trainer.seed)
    params = [
        p for p in list(encoder.parameters()) + list(objective.parameters()) if p.requires_grad
    ]
    optimizer = runtime.optimizer(params, trainer.lr, trainer.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(trainer.schedule, trainer.warmup_steps, trainer.max_steps)
    )
    components = Components(
        encoder=encoder,
        objective=objective,
        dataset=dataset,
        sampler=mix.sampler if mix else StepSampler(len(dataset), trainer.batch_size, trainer.seed),
        collator=mix.collator(collator, objective) if mix else collator,
        runtime=runtime,
        optimizer=optimizer,
        scheduler=scheduler,
        evaluator=dev_evaluator(cfg),
        checkpointer=checkpointer,
        tracker=tracker,
    )
    data_tags = {f"data.sha256.{name}": digest[:16] for name, digest in corpus.checksums.items()}
    return components, {
        **data_tags,
        **corpus.tags,
        "data.sentences": str(len(dataset)),
        "model.source": encoder.source,
    }


def run_training(cfg: DictConfig) -> float:
    """Train and test; the dev selection metric (NaN without dev evaluation or on ranks > 0)."""
    return train(cfg).selection_metric


def train(cfg: DictConfig) -> RunSummary:
    """Train, select on dev, test the selected checkpoint once; the MLflow run is closed with
    FINISHED, KILLED (interrupted, resumable) or FAILED whatever happens."""
    with failed_job_recorded(cfg):  # in a sweep, a job refused here is still a FAILED child
        ctx = RunContext.create(cfg, "runs")
        reports = after_training(cfg)
        rank, _ = init_distributed()  # torchrun: join the group; one process: (0, 1)
        # Built (its data read and checked) before any model loads or step runs, so a bad
        # eval setting or file fails now, not after training and its resume state are gone.
        tester = instantiate(cfg.eval) if rank == 0 else None
        wanted_hash = config_hash(cfg)
        in_sweep = sweep_dir()
        if in_sweep and (done := finished_before(ctx, wanted_hash)):
            print(f"skip: this job's config already finished as MLflow run {done.run_id}")
            return done
        ctx.run_dir, resumed = resume_target(ctx.settings, ctx.run_dir, wanted_hash)
        if rank == 0:  # only rank 0 writes: logs, checkpoints, results
            check_writable(ctx.run_dir)
    tags = ctx.tags(**{"dev_eval.protocol": str(cfg.dev_eval.protocol)}, config_hash=wanted_hash)
    if parent := parent_run_id(in_sweep):
        tags["mlflow.parentRunId"] = parent
    resume_id = resumed.get("run_id") if resumed else None
    tracker = ctx.tracker(tags, resume_id, rank)  # before seeding: random run names differ
    tracker.spill_path = ctx.run_dir / "unsynced_metrics.jsonl"  # if the store stays unreachable
    status = "FAILED"
    try:
        seed_everything(ctx.settings.trainer.seed + rank)  # distinct dropout streams per rank
        if rank == 0:
            write_text_atomic(ctx.run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        components, more_tags = build(cfg, ctx.settings, ctx.run_dir, tracker)
        components.meta = {"config_hash": wanted_hash, "run_id": tracker.run_id}
        tracker.set_tags(more_tags)
        selection, metrics = _train_and_test(ctx, components, tester, resumed is not None, reports)
        status = "FINISHED"
        summary = ctx.summary(selection, metrics, tracker.run_id)
    except Interrupted:
        status = "KILLED"
        raise
    finally:
        if rank == 0:
            with_model = ctx.settings.tracking.log_model and status == "FINISHED"
            _log_run_files(tracker, ctx.run_dir, with_model)
        try:
            end_run(tracker, status, ctx.run_dir)  # the store must hold the run whole
        finally:
            free_memory()  # multirun jobs in one process start clean
    return summary


def _train_and_test(
    ctx: RunContext, c: Components, tester, resume: bool, reports: list[str]
) -> tuple[float, dict[str, float]]:
    """Fit, then (rank 0) test the selected checkpoint and write the run's reports."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    if c.runtime.is_main:  # every logged metric also goes to metrics.jsonl, for the plots
        c.tracker = MetricLog(c.tracker, run_dir / METRIC_LOG)
    start, progress = 0, None
    if resume:
        start, progress = c.checkpointer.load_state(
            c.encoder, c.objective, c.optimizer, c.scheduler
        )
    else:  # eval.compare_initial: the start's test scores, for the plots
        start_model = unsharded(c)
        if c.runtime.is_main:
            cache = ctx.settings.paths.cache_dir
            args = (cfg.eval, start_model, run_dir, cache)
            never_fail("scoring the start checkpoint", score_start, *args)
    fitted = fit(c, ctx.settings.trainer, start, progress)
    # without dev evaluation the last model is the result: gathered with every rank (fsdp)
    final = None if ctx.settings.trainer.eval_every else unsharded(c)
    if not c.runtime.is_main:  # rank 0 tests and reports
        return float("nan"), {}
    c.checkpointer.discard_state()  # training is complete: resume state is no longer needed
    if fitted.best_step < 0:  # no dev evaluation configured: the last model is the result
        c.checkpointer.save_best(final, fitted.steps, "last", float("nan"))
    best = c.checkpointer.load_best(c.runtime.device)  # test what was saved, exactly
    test_result = tester(best)
    test_metrics = test_result.prefixed("test")
    c.tracker.log_metrics(test_metrics, fitted.best_step)
    dev_label = f"eval/{c.evaluator.protocol}/{c.evaluator.label(c.evaluator.tasks[0])}"
    _write_results(run_dir, fitted, test_result, dev_label)
    summary = {"train/seconds": fitted.train_seconds}
    if fitted.history:  # selection summary, for run tables and sweep parents
        summary.update(
            {
                "eval/best": fitted.best_metric,
                "eval/best_step": fitted.best_step,
                "eval/start": fitted.history[0]["primary"],
            }
        )
    c.tracker.log_metrics(summary, fitted.steps)
    references = never_fail("published baselines", published_references, str(cfg.eval.protocol))
    plots = (run_dir, c.tracker, fitted.history, dev_label, test_metrics, references)
    never_fail("plots", write_run_plots, *plots)
    for name in reports:
        args = (
            getattr(c.objective, "inner", c.objective),
            c.evaluator,
            best,
            run_dir,
            c.tracker,
            fitted.best_step,
        )
        never_fail(f"after_training {name}", AFTER_TRAINING[name], *args)
    selection = fitted.best_metric if fitted.history else float("nan")
    return selection, {**test_metrics, **summary}


def _write_results(run_dir: Path, fitted, test_result, dev_label: str) -> None:
    """eval_results.json (selection history and test scores) and the per-pair test scores."""
    report = {
        "selection": {
            "metric": dev_label,
            "best": fitted.best_metric,
            "best_step": fitted.best_step,
            "history": fitted.history,
        },
        "test": {
            "protocol": test_result.details.get("protocol"),
            "pairs": test_result.details.get("pairs"),
            "metrics": test_result.metrics,
            "checkpoint_step": fitted.best_step,
        },
        "train_seconds": fitted.train_seconds,
    }
    write_text_atomic(run_dir / "eval_results.json", json.dumps(report, indent=2))
    if pairs := getattr(test_result, "pairs", None):  # for `runs compare` and seed statistics
        save_pair_scores(pairs, run_dir / PAIR_SCORES)


def _log_run_files(tracker, run_dir: Path, with_model: bool) -> None:
    for name in ("config.yaml", "eval_results.json", PAIR_SCORES, START_FILE):
        if (run_dir / name).is_file():
            tracker.log_artifact(run_dir / name)
    if (run_dir / ".hydra").is_dir():
        tracker.log_artifacts(run_dir / ".hydra", ".hydra")
    best = run_dir / "checkpoints" / "best"
    if with_model and best.is_dir():
        tracker.log_artifacts(best, "model")
