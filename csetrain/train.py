"""run_training(cfg): assemble the components a config names, fit, then test the best checkpoint
once. Returns the dev selection metric (what sweepers maximise)."""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from csetrain.checkpoint import Checkpointer, config_hash, find_resumable, write_text_atomic
from csetrain.config import ConfigError, instantiate, validate_settings
from csetrain.data.cache import tokenized_dataset
from csetrain.data.collate import Collator, StepSampler
from csetrain.data.sources import load_corpus
from csetrain.eval.grid import grid_after_training
from csetrain.eval.pair_scores import FILE_NAME as PAIR_SCORES
from csetrain.eval.pair_scores import save_pair_scores
from csetrain.grad_cache import GradCache
from csetrain.loop import Components, Interrupted, fit
from csetrain.objectives.matryoshka_2d import Matryoshka2D
from csetrain.plots import (
    METRIC_LOG,
    MetricLog,
    never_fail,
    published_references,
    score_start,
    write_run_plots,
)
from csetrain.regularizers.regularized import Regularized
from csetrain.runtime import Runtime, init_distributed, lr_lambda, seed_everything
from csetrain.tracking import NullTracker, git_info, make_tracker


@dataclass
class TrainSummary:
    selection_metric: float
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    run_dir: str = ""
    tracking_uri: str = ""
    experiment: str = ""

    def where(self) -> str:
        """Where to look, for the end of a command's output."""
        lines = [f"  run dir:  {self.run_dir}  (config.yaml, eval_results.json, checkpoints/best/)"]
        if self.run_id:
            lines.append(
                f"  MLflow:   run {self.run_id} in experiment '{self.experiment}' at {self.tracking_uri}"
            )
            lines.append(
                f"  browse:   pip install 'csetrain[ui]' && mlflow ui --backend-store-uri {self.tracking_uri}"
            )
        return "\n".join(lines)


def hydra_context() -> tuple[Path | None, dict[str, str], list[str]]:
    """(run dir, group choices, task overrides) when running under @hydra.main, else empties."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, {}, []
    hc = HydraConfig.get()
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    return Path(hc.runtime.output_dir), choices, list(hc.overrides.task)


def sweep_dir() -> str | None:
    """The sweep directory when this job is part of a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(HydraConfig.get().sweep.dir)


def finished_before(settings: dict, wanted_hash: str) -> TrainSummary | None:
    """In a sweep, a job whose exact config already FINISHED is not run again."""
    if settings["tracking"].backend != "mlflow":
        return None
    from csetrain.tracking import find_finished_run

    run = find_finished_run(settings["tracking"], wanted_hash)
    if run is None:
        return None
    metrics = dict(run.data.metrics)
    return TrainSummary(
        metrics.get("eval/best", float("nan")),
        metrics,
        run.info.run_id,
        run.data.tags.get("run_dir", ""),
        settings["tracking"].uri,
        settings["tracking"].experiment,
    )


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    if cfg.tracking.get("run_name"):
        return cfg.tracking.run_name
    return (",".join(overrides) or "defaults")[:250]


def check_fields(objective, corpus, cfg: DictConfig) -> None:
    """The objective (and its miner) say what they need; the data must provide it."""
    missing = [f for f in objective.required_data_fields if f not in corpus.fields]
    if missing:
        raise ConfigError(
            f"objective {type(objective).__name__} (with negative_mining {type(objective.miner).__name__}) "
            f"needs data fields {missing} but data '{corpus.name}' provides {list(corpus.fields)}: choose a matching data= option"
        )


def build_objective(cfg: DictConfig, runtime=None):
    """The objective with its miner, run through GradCache (`trainer.grad_cache.chunk_size`,
    with a runtime) and any regularizers (`regularizer=[name,...]`) as wrappers."""
    objective = instantiate(cfg.objective, miner=instantiate(cfg.negative_mining))
    chunk_size = cfg.trainer.grad_cache.chunk_size if runtime is not None else 0
    if chunk_size:
        objective = GradCache(objective, chunk_size, runtime)
    regularizers = {
        name: instantiate(node) for name, node in (cfg.get("regularizer") or {}).items()
    }
    return Regularized(objective, regularizers) if regularizers else objective


def dev_evaluator(cfg: DictConfig):
    """The selection evaluator; selecting a checkpoint on test data is refused."""
    evaluator = instantiate(cfg.dev_eval)
    if getattr(evaluator, "split", "dev") == "test":
        raise ConfigError(
            "dev_eval scores a test split: select on dev (eval@dev_eval=stsb_dev), test once with eval="
        )
    return evaluator


def build(
    cfg: DictConfig, settings: dict, run_dir: Path, tracker
) -> tuple[Components, dict[str, str]]:
    trainer = settings["trainer"]
    runtime = Runtime(trainer)
    encoder = runtime.prepare(instantiate(cfg.model), trainer.compile, trainer.packing)
    objective = build_objective(cfg, runtime).to(runtime.device)
    corpus = load_corpus(cfg.data)  # with the option's instruction, if any
    check_fields(objective, corpus, cfg)
    dataset = tokenized_dataset(corpus, encoder.tokenizer, settings["paths"].cache_dir)
    # Before the optimizer and any resume: momentum copies start from these weights, heads the
    # binding creates get optimized, corpus-reading miners take the tokenized rows.
    objective.bind(encoder, dataset)
    objective.to(runtime.device)
    tokenizer = encoder.tokenizer
    collator = Collator(
        data_fields=objective.data_fields
        + tuple(f for f in objective.miner.fields if f not in objective.data_fields),
        augmentation=instantiate(cfg.augmentation),
        pad_id=tokenizer.pad_token_id,
        special_ids=set(tokenizer.all_special_ids),
        augmented_positive=objective.augmented_positive,
        seed=trainer.seed,
        tokenizer=tokenizer,
        max_length=corpus.max_length,
    )
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
        sampler=StepSampler(len(dataset), trainer.batch_size, trainer.seed),
        collator=collator,
        runtime=runtime,
        optimizer=optimizer,
        scheduler=scheduler,
        evaluator=dev_evaluator(cfg),
        checkpointer=Checkpointer(run_dir),
        tracker=tracker,
    )
    data_tags = {f"data.sha256.{name}": digest[:16] for name, digest in corpus.checksums.items()}
    return components, {
        **data_tags,
        "data.sentences": str(len(dataset)),
        "model.source": encoder.source,
    }


def resume_target(settings: dict, fresh_dir: Path, wanted_hash: str) -> tuple[Path, dict | None]:
    """(run dir, saved meta) to continue from, or (fresh dir, None) to start anew."""
    mode = settings["trainer"].resume
    if mode == "never":
        return fresh_dir, None
    found = (
        find_resumable(settings["paths"].output_dir, wanted_hash) if mode == "auto" else Path(mode)
    )
    if found is None:
        return fresh_dir, None
    meta = Checkpointer(found).meta()
    if meta is None:
        raise ConfigError(
            f"trainer.resume={mode}: {found} has no checkpoints/last/; set a run dir that was interrupted, or auto"
        )
    if meta.get("config_hash") != wanted_hash:
        raise ConfigError(
            f"trainer.resume={mode}: {found} was trained with a different config; resume with its own overrides"
        )
    return found, meta


MIN_FREE_BYTES = 1 << 30  # a base-size model's checkpoints with optimizer state need ~1.5 GB


def check_writable(run_dir: Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Fail before any work if the output directory is read-only or nearly full."""
    import shutil

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"cannot write to {run_dir} ({err.strerror}): set paths.output_dir to a writable directory"
        ) from None
    free = shutil.disk_usage(run_dir).free
    if free < min_free:
        raise ConfigError(
            f"only {free >> 20} MiB free under {run_dir}: free space or set paths.output_dir elsewhere"
        )


def run_training(cfg: DictConfig) -> TrainSummary:
    """Train, select on dev, test the selected checkpoint once; the MLflow run is closed with
    FINISHED, KILLED (interrupted, resumable) or FAILED whatever happens."""
    settings = validate_settings(cfg)
    rank, _ = init_distributed()  # torchrun: join the group; one process: (0, 1)
    hydra_dir, choices, overrides = hydra_context()
    fresh = hydra_dir or Path(settings["paths"].output_dir) / "runs" / time.strftime(
        "%Y-%m-%d_%H-%M-%S"
    )
    wanted_hash = config_hash(cfg)
    in_sweep = sweep_dir()
    if in_sweep and (done := finished_before(settings, wanted_hash)):
        print(f"skip: this job's config already finished as MLflow run {done.run_id}")
        return done
    run_dir, resumed = resume_target(settings, fresh, wanted_hash)
    if rank == 0:  # only rank 0 writes: logs, checkpoints, results
        check_writable(run_dir)
    tags = {
        **{f"choice.{k}": v for k, v in choices.items()},
        **git_info(),
        "eval.protocol": str(cfg.eval.protocol),
        "dev_eval.protocol": str(cfg.dev_eval.protocol),
        "run_dir": str(run_dir.resolve()),
        "config_hash": wanted_hash,
    }
    from csetrain.sweep import parent_run_id

    if parent := parent_run_id(in_sweep):
        tags["mlflow.parentRunId"] = parent
    resume_id = resumed.get("run_id") if resumed else None
    tracker = (  # named before seeding (fixed seeds would repeat random run names)
        make_tracker(settings["tracking"], run_name(cfg, overrides), tags, cfg, resume_id)
        if rank == 0
        else NullTracker()
    )
    tracker.spill_path = run_dir / "unsynced_metrics.jsonl"  # if the store stays unreachable
    status = "FAILED"
    try:
        seed_everything(settings["trainer"].seed + rank)  # distinct dropout streams per rank
        if rank == 0:
            write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        components, more_tags = build(cfg, settings, run_dir, tracker)
        components.meta = {"config_hash": wanted_hash, "run_id": tracker.run_id}
        tracker.set_tags(more_tags)
        summary = _train_and_test(cfg, settings, components, run_dir, resumed is not None)
        summary.run_id = tracker.run_id
        summary.tracking_uri = settings["tracking"].uri
        summary.experiment = settings["tracking"].experiment
        status = "FINISHED"
        return summary
    except Interrupted:
        status = "KILLED"
        raise
    finally:
        if rank == 0:
            _log_run_files(
                tracker, run_dir, settings["tracking"].log_model and status == "FINISHED"
            )
        tracker.finish(status)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _train_and_test(
    cfg: DictConfig, settings: dict, c: Components, run_dir: Path, resume: bool
) -> TrainSummary:
    if c.runtime.is_main:  # every logged metric also goes to metrics.jsonl, for the plots
        c.tracker = MetricLog(c.tracker, run_dir / METRIC_LOG)
    start, progress = 0, None
    if resume:
        start, progress = c.checkpointer.load_state(
            c.encoder, c.objective, c.optimizer, c.scheduler
        )
    elif c.runtime.is_main:  # eval.compare_initial: the start's test scores, for the plots
        cache = settings["paths"].cache_dir
        never_fail("scoring the start checkpoint", score_start, cfg.eval, c.encoder, run_dir, cache)
    fitted = fit(c, settings["trainer"], start, progress)
    if not c.runtime.is_main:  # rank 0 tests and reports
        return TrainSummary(float("nan"), {}, run_dir=str(run_dir))
    c.checkpointer.discard_state()  # training is complete: resume state is no longer needed
    if fitted.best_step < 0:  # no dev evaluation configured: the last model is the result
        c.checkpointer.save_best(c.encoder, fitted.steps, "last", float("nan"))
    best = c.checkpointer.load_best(c.runtime.device)  # test what was saved, exactly
    test_result = instantiate(cfg.eval)(best)
    test_metrics = test_result.prefixed("test")
    c.tracker.log_metrics(test_metrics, fitted.best_step)
    report = {
        "selection": {
            "metric": f"eval/{c.evaluator.protocol}/{c.evaluator.label(c.evaluator.tasks[0])}",
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
    dev_label, history = report["selection"]["metric"], fitted.history
    references = never_fail("published baselines", published_references, str(cfg.eval.protocol))
    plots = (run_dir, c.tracker, history, dev_label, test_metrics, references)
    never_fail("plots", write_run_plots, *plots)
    objective = getattr(c.objective, "inner", c.objective)  # under GradCache / regularizers
    if isinstance(objective, Matryoshka2D):  # trained for every (layer, size): show them all
        args = (objective, c.evaluator, best, run_dir, c.tracker, fitted.best_step)
        never_fail("the layer x dim grid", grid_after_training, *args)
    selection = fitted.best_metric if fitted.history else float("nan")
    return TrainSummary(selection, {**test_metrics, **summary}, run_dir=str(run_dir))


def _log_run_files(tracker, run_dir: Path, with_model: bool) -> None:
    for name in ("config.yaml", "eval_results.json", PAIR_SCORES):
        if (run_dir / name).is_file():
            tracker.log_artifact(run_dir / name)
    if (run_dir / ".hydra").is_dir():
        tracker.log_artifacts(run_dir / ".hydra", ".hydra")
    best = run_dir / "checkpoints" / "best"
    if with_model and best.is_dir():
        tracker.log_artifacts(best, "model")
