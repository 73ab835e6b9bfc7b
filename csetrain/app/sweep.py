"""Sweeps (`csetrain train -m …`, any Hydra sweeper/launcher) as MLflow parent/child runs.

A Hydra callback opens one parent run per sweep before the first job and summarises it after
the last; each job's run names the parent (tag `mlflow.parentRunId`), found through the
environment (same process) or a file in the sweep directory (remote launchers). The parent is
keyed by the sweep's own overrides, so running the same sweep again reopens it, and jobs whose
exact config already FINISHED are skipped (app/resume.py), which makes a sweep resumable.

A sweep whose finished children differ only in seeds (`-m trainer.seed=1,2,3`) also gets seed
statistics on its parent: for each headline test score (per-task Spearman and the average) the
mean, std (ddof=1) and a 95% bootstrap interval of the mean, as `seeds/<metric>/{mean,std,
ci_low,ci_high}`, plus `seeds/n` and a table artifact (seeds/seed_statistics.{md,json}).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from csetrain.app.settings import register_resolvers
from csetrain.config import TrackingConfig

PARENT_FILE = "mlflow_parent_run_id"
PARENT_ENV = "CSETRAIN_PARENT_RUN_ID"  # the parent run, for jobs in the sweep's own process


def _tracking(config: DictConfig) -> TrackingConfig | None:
    register_resolvers()
    node = OmegaConf.to_container(config.tracking, resolve=True)
    settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrackingConfig), node))
    return settings if settings.backend == "mlflow" else None


def sweep_key(config: DictConfig) -> str:
    """Identity of a sweep: its config name and command-line overrides, order-free."""
    overrides = sorted(config.hydra.overrides.task)
    return hashlib.sha256(
        json.dumps([config.hydra.job.config_name, overrides]).encode()
    ).hexdigest()[:16]


def parent_run_id(sweep_dir: str | None) -> str | None:
    """The enclosing sweep's parent run, if this job belongs to one."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    marker = Path(sweep_dir) / PARENT_FILE if sweep_dir else None
    return marker.read_text().strip() if marker and marker.is_file() else None


@contextlib.contextmanager
def failed_job_recorded(config: DictConfig):
    """Around the checks a job runs before it has a run of its own: a job of a sweep that fails
    them (`-m trainer.lr=1e-5,abc`) is recorded as a FAILED child of the sweep's parent, so the
    parent counts it, then the error goes on."""
    try:
        yield
    except Exception as err:
        with contextlib.suppress(Exception):  # recording must never hide the job's own error
            _record_failed_job(config, err)
        raise


def _record_failed_job(config: DictConfig, err: Exception) -> None:
    from csetrain.app.compose import hydra_context, sweep_dir
    from csetrain.app.store.retry import first_line
    from csetrain.app.store.sweeps import record_failed_child

    sweep = sweep_dir()
    parent = parent_run_id(sweep) if sweep else None
    tracking = _tracking(config) if parent else None
    if tracking is None:
        return
    run_dir, _, overrides = hydra_context()
    name = (",".join(overrides) or "defaults")[:250]
    tags = {"csetrain.error": first_line(err), "run_dir": str(run_dir or "")}
    record_failed_child(tracking, parent, name, tags)


HEADLINE = re.compile(r"^test/[^/]+/[^/]+/(spearman|spearman_all|cosine_spearman)$")


def differing_params(runs: list[dict]) -> list[str]:
    """Config keys whose values are not the same in every run."""
    keys = set().union(*(r["params"] for r in runs))
    return sorted(k for k in keys if len({r["params"].get(k) for r in runs}) > 1)


def seed_statistics(children: list[dict], uri: str | None, resamples: int = 1000, seed: int = 0):
    """{metric: SeedSummary} over the FINISHED children, or a string saying why there is none.

    The interval resamples seeds and, when every child saved its per-pair test similarities
    (pair_scores.npz), test pairs too (csetrain.stats.seed_and_pair_bootstrap): it then covers
    both training randomness and the finite test set. Without pair data (eval=mteb, older runs)
    it resamples seeds only (csetrain.stats.seed_bootstrap), which with few seeds is coarse.
    """
    from csetrain.stats import seed_bootstrap

    runs = [c for c in children if c["status"] == "FINISHED"]
    if len(runs) < 2:
        return f"{len(runs)} finished job(s); seed statistics need 2 or more"
    other = [k for k in differing_params(runs) if k.rsplit(".", 1)[-1] != "seed"]
    if other:
        return f"jobs differ in {', '.join(other[:3])}, not only in seeds"
    keys = sorted(set.intersection(*({k for k in r["metrics"] if HEADLINE.match(k)} for r in runs)))
    summaries = _pair_level(runs, uri, resamples, seed)
    for key in keys:
        if key not in summaries:
            values = [r["metrics"][key] for r in runs]
            summaries[key] = seed_bootstrap(values, resamples, seed)
    return {k: summaries[k] for k in keys if k in summaries}


def _pair_level(runs: list[dict], uri: str | None, resamples: int, seed: int) -> dict:
    """Two-level summaries keyed by test metric, if every run has the same tasks' pair data."""
    from csetrain.app.reports.tables import pair_scores_for
    from csetrain.stats import seed_and_pair_bootstrap

    scores = [pair_scores_for(r, uri) for r in runs]
    if None in scores:
        return {}
    gold = {t: p.gold for t, p in scores[0].tasks.items()}
    if any(
        s.tasks.keys() != gold.keys()
        or any(not np.array_equal(s.tasks[t].gold, gold[t]) for t in gold)
        for s in scores
    ):  # not scored on the same pairs: no shared pair resamples
        return {}
    sims = [{t: p.sims for t, p in s.tasks.items()} for s in scores]
    results = seed_and_pair_bootstrap(sims, gold, resamples, seed)
    names = {t: f"test/{p.metric_key}" for t, p in scores[0].tasks.items()}
    names["avg"] = f"test/{scores[0].avg_key}"
    return {names[t]: summary for t, summary in results.items()}


def seed_report(summaries: dict) -> tuple[dict[str, float], str]:
    """MLflow metrics and a markdown table of the seed statistics."""
    metrics = {"seeds/n": next(iter(summaries.values())).n}
    rows = []
    for key, s in summaries.items():
        values = {"mean": s.mean, "std": s.std, "ci_low": s.low, "ci_high": s.high}
        metrics.update({f"seeds/{key}/{name}": v for name, v in values.items() if v == v})
        cells = [
            key,
            s.n,
            f"{s.mean:.2f}",
            f"{s.std:.2f}",
            f"[{s.low:.2f}, {s.high:.2f}]",
            s.method,
        ]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    header = ["| metric | seeds | mean | std | 95% CI of the mean | resampled |", "|---" * 6 + "|"]
    return metrics, "\n".join([*header, *rows]) + "\n"


class MlflowSweep(Callback):
    """Parent run around a multirun (configured in conf/train.yaml `hydra.callbacks`);
    `resamples`/`seed` set the seed-statistics bootstrap
    (`+hydra.callbacks.mlflow_sweep.resamples=2000`)."""

    def __init__(self, resamples: int = 1000, seed: int = 0) -> None:
        self.resamples, self.seed = resamples, seed

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from csetrain.app.store.sweeps import open_parent_run

        tracking = _tracking(config)
        if tracking is None:
            return
        name = "sweep: " + " ".join(config.hydra.overrides.task)
        parent = open_parent_run(
            tracking, name[:250], sweep_key(config), {"sweep_dir": str(config.hydra.sweep.dir)}
        )
        os.environ[PARENT_ENV] = parent
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        (Path(config.hydra.sweep.dir) / PARENT_FILE).write_text(parent)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from csetrain.app.store.sweeps import close_parent_run

        tracking, parent = _tracking(config), os.environ.pop(PARENT_ENV, None)
        if tracking is None or parent is None:
            return
        try:
            self._seed_statistics(tracking, parent, Path(config.hydra.sweep.dir))
        finally:  # the parent is closed whatever the statistics do
            summary = close_parent_run(tracking, parent)
        print(
            f"sweep: {summary['sweep/finished']} finished, {summary['sweep/failed']} failed "
            f"of {summary['sweep/jobs']} jobs; parent MLflow run {parent}"
        )

    def _seed_statistics(self, tracking: TrackingConfig, parent: str, sweep_dir: Path) -> None:
        from csetrain.app.store.sweeps import child_runs, log_to_run

        children = child_runs(tracking, parent)
        summaries = seed_statistics(children, tracking.uri, self.resamples, self.seed)
        if isinstance(summaries, str):
            print(f"seed statistics: none ({summaries})")
            return
        metrics, markdown = seed_report(summaries)
        metrics["seeds/not_finished"] = sum(c["status"] != "FINISHED" for c in children)
        table_md, table_json = sweep_dir / "seed_statistics.md", sweep_dir / "seed_statistics.json"
        table_md.write_text(markdown)
        table_json.write_text(json.dumps({k: vars(v) for k, v in summaries.items()}, indent=2))
        log_to_run(tracking, parent, metrics, [table_md, table_json], "seeds")
        print(
            f"seed statistics over {metrics['seeds/n']} finished jobs "
            f"({metrics['seeds/not_finished']} not finished, not counted; {table_md}):\n{markdown}"
        )
