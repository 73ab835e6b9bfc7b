"""run_evaluation(cfg): score one model option or saved folder with the configured evaluator."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from csetrain.checkpoint import write_text_atomic
from csetrain.config import instantiate, validate_settings
from csetrain.eval.pair_scores import FILE_NAME as PAIR_SCORES
from csetrain.eval.pair_scores import save_pair_scores
from csetrain.runtime import pick_device
from csetrain.tracking import git_info, make_tracker
from csetrain.train import TrainSummary, hydra_context, run_name


def run_evaluation(cfg: DictConfig) -> TrainSummary:
    settings = validate_settings(cfg)
    hydra_dir, choices, overrides = hydra_context()
    run_dir = hydra_dir or Path(settings["paths"].output_dir) / "evals" / time.strftime(
        "%Y-%m-%d_%H-%M-%S"
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    tags = {
        **{f"choice.{k}": v for k, v in choices.items()},
        **git_info(),
        "eval.protocol": str(cfg.eval.protocol),
        "kind": "eval",
        "run_dir": str(run_dir.resolve()),
    }
    tracker = make_tracker(settings["tracking"], run_name(cfg, overrides), tags, cfg)
    status = "FAILED"
    try:
        evaluator = instantiate(cfg.eval)  # data errors surface before the model loads
        encoder = instantiate(cfg.model).to(pick_device(cfg.device))
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
        write_text_atomic(run_dir / "eval_results.json", json.dumps(report, indent=2))
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        tracker.log_artifact(run_dir / "eval_results.json")
        if pairs := getattr(result, "pairs", None):  # for `csetrain runs compare`
            save_pair_scores(pairs, run_dir / PAIR_SCORES)
            tracker.log_artifact(run_dir / PAIR_SCORES)
        status = "FINISHED"
        return TrainSummary(result.primary, metrics, tracker.run_id, str(run_dir))
    finally:
        tracker.finish(status)
