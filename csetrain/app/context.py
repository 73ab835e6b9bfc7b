"""What a `train` and an `eval` run set up before their work, written once: typed settings, the
Hydra context (run dir, group choices, overrides), the run's name and tags, its tracker; and the
summary both return."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from csetrain.app.compose import hydra_context
from csetrain.app.settings import plain, validate_settings
from csetrain.app.store.tracker import NullTracker, Tracker, make_tracker
from csetrain.config import ConfigError, Settings

MIN_FREE_BYTES = 1 << 30  # a base-size model's checkpoints with optimizer state need ~1.5 GB


@dataclass
class RunSummary:
    """A finished run: its selection metric (dev, what sweepers maximise), metrics, where it is."""

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


@dataclass
class RunContext:
    """One run's set-up: its config, typed settings, run dir and Hydra choices/overrides."""

    cfg: DictConfig
    settings: Settings
    run_dir: Path
    choices: dict[str, str]
    overrides: list[str]

    @classmethod
    def create(cls, cfg: DictConfig, folder: str) -> RunContext:
        """Validate the settings; the run dir is Hydra's, else `<output_dir>/<folder>/<time>`."""
        settings = validate_settings(cfg)
        hydra_dir, choices, overrides = hydra_context()
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        run_dir = hydra_dir or Path(settings.paths.output_dir) / folder / stamp
        return cls(cfg, settings, run_dir, choices, overrides)

    @property
    def name(self) -> str:
        """`tracking.run_name`, else the command-line overrides."""
        if self.settings.tracking.run_name:
            return self.settings.tracking.run_name
        return (",".join(self.overrides) or "defaults")[:250]

    def tags(self, **extra: str) -> dict[str, str]:
        """Group choices, git state, the test protocol and the run dir, plus `extra`."""
        return {
            **{f"choice.{k}": v for k, v in self.choices.items()},
            **git_info(),
            "eval.protocol": str(self.cfg.eval.protocol),
            **extra,
            "run_dir": str(self.run_dir.resolve()),
        }

    def tracker(self, tags: dict[str, str], resume_id: str | None = None, rank: int = 0) -> Tracker:
        """The run's tracker, created before any seeding; other DDP ranks get a null one."""
        if rank > 0:
            return NullTracker()
        return make_tracker(self.settings.tracking, self.name, tags, plain(self.cfg), resume_id)

    def summary(self, selection: float, metrics: dict[str, float], run_id: str | None):
        tracking = self.settings.tracking
        return RunSummary(
            selection, metrics, run_id, str(self.run_dir), tracking.uri, tracking.experiment
        )


def git_info() -> dict[str, str]:
    """git sha and dirty flag of the working directory's repository, if any."""

    def run(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)

    try:
        sha = run("rev-parse", "HEAD")
        if sha.returncode != 0:
            return {}
        dirty = bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"git.sha": sha.stdout.strip(), "git.dirty": str(dirty).lower()}
    except (OSError, subprocess.TimeoutExpired):
        return {}


def check_writable(run_dir: Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Fail before any work if the output directory is read-only or nearly full."""
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
