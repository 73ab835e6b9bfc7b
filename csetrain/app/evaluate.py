"""run_evaluation(cfg): score one model option or saved folder with the configured evaluator."""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from csetrain.app.context import RunContext, RunSummary
from csetrain.app.settings import instantiate
from csetrain.app.store.tracker import end_run
from csetrain.checkpoint import write_text_atomic
from csetrain.eval.pair_scores import FILE_NAME as PAIR_SCORES
from csetrain.eval.pair_scores import save_pair_scores
from csetrain.runtime import keep_freed_host_memory, pick_device


def build_evaluator(cfg: DictConfig, ctx: RunContext):
    """The `eval` option; an evaluator that writes files (`output_dir: null`) writes into the
    run dir."""
    if "output_dir" in cfg.eval and cfg.eval.output_dir is None:
        return instantiate(cfg.eval, output_dir=str(ctx.run_dir))
    return instantiate(cfg.eval)


def log_mteb_summary(tracker, run_dir, metrics: dict[str, float], summary: list[dict]) -> None:
    """Protocol labels as run tags, the leaderboard bar plot as an artifact (never fails)."""
    from csetrain.app.reports.leaderboard import FILE_NAME, summary_bars, summary_tags
    from csetrain.app.reports.plots import never_fail, save_figure

    tags = summary_tags(summary)
    tracker.set_tags(tags)
    run = {"metrics": metrics, "tags": tags}
    if never_fail("plot mteb_summary", lambda: save_figure(summary_bars(run), run_dir / FILE_NAME)):
        tracker.log_artifact(run_dir / FILE_NAME, "plots")


def run_evaluation(cfg: DictConfig) -> RunSummary:
    """Evaluate, write eval_results.json (and per-pair scores) into the run dir, log them."""
    ctx = RunContext.create(cfg, "evals")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    tracker = ctx.tracker(ctx.tags(kind="eval"))
    status = "FAILED"
    try:
        evaluator = build_evaluator(cfg, ctx)  # data errors surface before the model loads
        device = pick_device(cfg.device)
        keep_freed_host_memory(device)  # CPU: no page faults on every batch's activations
        encoder = instantiate(cfg.model).to(device)
        tracker.set_tags({"model.source": encoder.source})
        result = evaluator(encoder)
        metrics = result.prefixed(cfg.stage)
        tracker.log_metrics(metrics, 0)
        report = {
            "model": encoder.source,
            "protocol": result.details["protocol"],
            "split": result.details["split"],
            "pairs": result.details["pairs"],
            "metrics": result.metrics,
        }
        write_text_atomic(ctx.run_dir / "eval_results.json", json.dumps(report, indent=2))
        write_text_atomic(ctx.run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if summary := result.details.get("summary"):  # eval=mteb: the leaderboard view
            report["mteb_summary"] = summary
            write_text_atomic(ctx.run_dir / "eval_results.json", json.dumps(report, indent=2))
            log_mteb_summary(tracker, ctx.run_dir, metrics, summary)
        tracker.log_artifact(ctx.run_dir / "eval_results.json")
        if pairs := getattr(result, "pairs", None):  # for `csetrain runs compare`
            save_pair_scores(pairs, ctx.run_dir / PAIR_SCORES)
            tracker.log_artifact(ctx.run_dir / PAIR_SCORES)
        status = "FINISHED"
        return ctx.summary(result.primary, metrics, tracker.run_id)
    finally:
        end_run(tracker, status, ctx.run_dir)  # the store must hold the run whole
