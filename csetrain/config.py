"""Config plumbing: where the YAML lives, schemas for plain settings, start-up validation.

Component groups (model, objective, ...) are checked by instantiating them; plain settings
(trainer, tracking, paths) are checked here against dataclasses, so a typo or a wrong type fails
at start-up with the key named, not after an hour of training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"


class CsetrainError(Exception):
    """An error the user can act on; the CLI prints its one-line message, not a traceback."""


class ConfigError(CsetrainError, ValueError):
    """A bad setting or input; the message is one line naming the key/file and the fix."""


def config_dir() -> Path:
    """The YAML tree: packaged copy in a wheel install, the repo's conf/ in a source checkout."""
    packaged = PACKAGE_DIR / "conf"
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / "conf"


def register_resolvers() -> None:
    """`${assets:sample}` points into the package's bundled data (works from any working dir)."""
    if not OmegaConf.has_resolver("assets"):
        OmegaConf.register_new_resolver("assets", lambda sub="": str(ASSETS_DIR / sub))


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


@dataclass
class PathsConfig:
    data_dir: str | None = None
    output_dir: str = "outputs"
    cache_dir: str = "outputs/cache"


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


def validate_settings(cfg: DictConfig) -> dict[str, Any]:
    """Check each plain-settings node against its schema; return the typed objects by name."""
    typed = {}
    for name, schema in SCHEMAS.items():
        if name not in cfg:
            continue
        try:
            values = OmegaConf.to_container(cfg[name], resolve=True)  # interpolations need the root
            merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        except OmegaConfBaseException as err:
            key = f"{name}.{err.full_key}" if getattr(err, "full_key", None) else name
            reason = str(err).splitlines()[0]
            raise ConfigError(
                f"config key '{key}': {reason} (see `csetrain validate`, conf/{name}/)"
            ) from None
        typed[name] = OmegaConf.to_object(merged)
    for (group, key), allowed in CHOICES.items():
        value = getattr(typed.get(group), key, allowed[0])
        if value not in allowed:
            raise ConfigError(f"config key '{group}.{key}'={value!r} is not one of {list(allowed)}")
    return typed


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
    if not path.is_file():
        raise ConfigError(
            f"{what} not found: {path} (set {key}, or paths.data_dir / $CSETRAIN_DATA_DIR)"
        )
    return path


def instantiate(node, **kwargs):
    """hydra.utils.instantiate, with our own errors unwrapped and others made one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, CsetrainError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ConfigError(
            " ".join(lines[:3]) + " (check that option's keys: `csetrain validate --show`)"
        ) from None
