"""From a composed Hydra config to what the library takes: typed settings, built components, a
config hash. The only place (with compose.py) that knows configs are OmegaConf nodes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from csetrain.config import (
    ASSETS_DIR,
    CHOICES,
    PACKAGE_DIR,
    SCHEMAS,
    ConfigError,
    CsetrainError,
    Settings,
    check_component_numbers,
    check_ranges,
)

# Keys that never change a run's result, left out of its config hash.
VOLATILE_KEYS = (("trainer", "resume"), ("trainer", "progress"), ("tracking", "run_name"))


def config_dir() -> Path:
    """The YAML tree: packaged copy in a wheel install, the repo's conf/ in a source checkout."""
    packaged = PACKAGE_DIR / "conf"
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / "conf"


def register_resolvers() -> None:
    """`${assets:sample}` points into the package's bundled data (works from any working dir)."""
    if not OmegaConf.has_resolver("assets"):
        OmegaConf.register_new_resolver("assets", lambda sub="": str(ASSETS_DIR / sub))


def plain(node) -> Any:
    """A config node as plain Python values, interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def validate_settings(cfg: DictConfig) -> Settings:
    """Check each plain-settings node against its schema and every numeric setting against its
    range, and that no key is left without a value; a missing node keeps the defaults. Cheap
    (no model, no data), so it runs before anything is loaded or written."""
    check_no_missing(cfg)
    settings = typed_settings(cfg)
    check_ranges(settings)
    for group in ("objective", "data", "dev_eval", "eval"):
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            check_component_numbers(group, plain(node))
    return settings


def check_no_missing(cfg: DictConfig) -> None:
    """A mandatory key (`???` in its YAML, e.g. model=saved's `path`) must be given."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} has no value (its option leaves it ???): pass {key}=...")


def typed_settings(cfg: DictConfig) -> Settings:
    """The plain-settings nodes as their dataclasses, with types and closed choices checked."""
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
    settings = Settings(**typed)
    for (group, key), allowed in CHOICES.items():
        value = getattr(getattr(settings, group), key)
        if value not in allowed:
            raise ConfigError(f"config key '{group}.{key}'={value!r} is not one of {list(allowed)}")
    return settings


def config_hash(cfg: DictConfig) -> str:
    """Identity of a run's configuration, ignoring keys that do not change the result."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for group, key in VOLATILE_KEYS:
        data.get(group, {}).pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def model_option(name: str) -> DictConfig | None:
    """The node of a model option (`conf/model/<name>.yaml`), or None if there is no such file."""
    path = config_dir() / "model" / f"{name}.yaml"
    return OmegaConf.load(path) if path.is_file() else None
