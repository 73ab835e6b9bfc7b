"""Errors the user can act on, and the schemas of the plain settings (trainer, tracking, paths).

The library reads its settings from these dataclasses; the application side
(csetrain/app/settings.py) checks a composed config against them at start-up, so a typo or a
wrong type fails with the key named, not after an hour of training.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"


class CsetrainError(Exception):
    """An error the user can act on; the CLI prints its one-line message, not a traceback."""


class ConfigError(CsetrainError, ValueError):
    """A bad setting or input; the message is one line naming the key/file and the fix."""


@dataclass
class GradCacheConfig:
    chunk_size: int = 0  # 0 = off


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "linear"
    max_grad_norm: float = 1.0  # HF Trainer's default, which SimCSE inherits; 0 = no clipping
    precision: str = "fp32"
    seed: int = 42
    eval_every: int = 125
    save_every: int = 0  # full-state checkpoint cadence for resume; 0 = at every dev evaluation
    resume: str = "never"  # never | auto (latest unfinished run with the same config) | a run dir
    log_every: int = 10
    device: str = "auto"
    num_threads: int = 0  # 0 = torch's default
    compile: bool = False
    packing: bool = True  # training forwards on packed rows, no padding (modeling/packing.py)
    fsdp: bool = False  # shard the encoder over torchrun's processes (FSDP2, csetrain/sharding.py)
    gradient_checkpointing: bool = False  # recompute activations in backward: memory for time
    progress: bool = True
    grad_cache: GradCacheConfig = field(default_factory=GradCacheConfig)


@dataclass
class TrackingConfig:
    backend: str = "mlflow"
    uri: str = "sqlite:///outputs/mlflow.db"
    experiment: str = "csetrain"
    artifact_location: str | None = None
    log_model: bool = True
    run_name: str | None = None
    register_as: str | None = None  # the model registry name `csetrain export --format mlflow` uses


@dataclass
class PathsConfig:
    data_dir: str | None = None
    output_dir: str = "outputs"
    cache_dir: str = "outputs/cache"


@dataclass
class Settings:
    """The plain settings of one run, typed; a config without a node gets the schema's defaults."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


SCHEMAS: dict[str, type] = {
    "trainer": TrainerConfig,
    "tracking": TrackingConfig,
    "paths": PathsConfig,
}
# Closed choices among plain settings (OmegaConf schemas cannot express Literal types).
CHOICES = {
    ("trainer", "schedule"): ("linear", "constant"),
    ("trainer", "precision"): ("fp32", "bf16", "fp16"),
    ("tracking", "backend"): ("mlflow", "none"),
}


def _int_at_least(low: int, why: str = "") -> tuple:
    return (lambda v: v >= low, f">= {low}{why}")


def _finite(low: float, strict: bool) -> tuple:
    sign = ">" if strict else ">="
    return (
        lambda v: math.isfinite(v) and (v > low if strict else v >= low),
        f"a finite number {sign} {low:g}",
    )


# The valid range of every numeric plain setting: (test, what the message says it must be).
# Checked at start-up (and by `csetrain validate`) so a bad number fails before a model loads.
RANGES: dict[tuple[str, str], tuple] = {
    ("trainer", "max_steps"): _int_at_least(1, " (the optimizer steps to run)"),
    ("trainer", "batch_size"): _int_at_least(
        2, " (every objective contrasts a row with the other rows of its batch)"
    ),
    ("trainer", "lr"): _finite(0, strict=True),
    ("trainer", "weight_decay"): _finite(0, strict=False),
    ("trainer", "warmup_steps"): _int_at_least(0),
    ("trainer", "max_grad_norm"): _finite(0, strict=False),
    ("trainer", "seed"): (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    ("trainer", "eval_every"): _int_at_least(0, " (0 = no dev evaluation)"),
    ("trainer", "save_every"): _int_at_least(0, " (0 = at every dev evaluation)"),
    ("trainer", "log_every"): _int_at_least(1),
    ("trainer", "num_threads"): _int_at_least(0, " (0 = torch's default)"),
    ("trainer.grad_cache", "chunk_size"): _int_at_least(0, " (0 = off)"),
}


def out_of_range(key: str, value, test_and_range: tuple) -> str | None:
    """`key=value: must be <range>` if `value` fails the test, else None."""
    test, allowed = test_and_range
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # types are the schema's job
    return None if test(value) else f"{key}={value}: must be {allowed}"


def check_ranges(settings: Settings) -> None:
    """Every numeric plain setting within its range, else one line naming key, value, range."""
    for (group, key), rule in RANGES.items():
        node = settings
        for part in group.split("."):
            node = getattr(node, part)
        if problem := out_of_range(f"{group}.{key}", getattr(node, key), rule):
            raise ConfigError(problem)


def check_component_numbers(group: str, values: dict) -> None:
    """The numeric keys of a component node (objective, data, eval) that have one obvious range:
    temperatures > 0 and finite, `max_length` and `batch_size` >= 1, `max_sentences` >= 1 (or
    null)."""
    for key, value in values.items():
        if key.endswith("temperature"):
            rule = _finite(0, strict=True)
        elif key == "max_length":
            rule = _int_at_least(1, " (tokens per training sentence)")
        elif key == "batch_size":
            rule = _int_at_least(1)
        elif key == "max_sentences":
            rule = _int_at_least(1, " (or null for all)")
        else:
            continue
        if problem := out_of_range(f"{group}.{key}", value, rule):
            raise ConfigError(problem)


def resolve_data_dir(data_dir: str | None) -> Path:
    """The data directory from config or $CSETRAIN_DATA_DIR, checked to exist."""
    chosen = data_dir or os.environ.get("CSETRAIN_DATA_DIR")
    if not chosen:
        raise ConfigError(
            "no data directory: pass paths.data_dir=/path/to/data or export CSETRAIN_DATA_DIR=/path/to/data"
        )
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"data directory {path} does not exist: fix paths.data_dir or $CSETRAIN_DATA_DIR"
        )
    return path


def require_file(path: Path, what: str, key: str) -> Path:
    """Fail with one line naming the missing file and the config key that points at it."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, not a file: point {key} at a file")
    if not path.is_file():
        raise ConfigError(
            f"{what} not found: {path} (set {key}, or paths.data_dir / $CSETRAIN_DATA_DIR)"
        )
    return path
