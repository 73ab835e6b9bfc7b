"""Hydra composition glue: compose a config as @hydra.main would, run a task under @hydra.main,
and read the running job's Hydra context (run dir, group choices, overrides, sweep dir)."""

from __future__ import annotations

import sys
from pathlib import Path

from csetrain.app.settings import config_dir, register_resolvers
from csetrain.config import ConfigError


def compose(config_name: str, overrides: list[str]):
    """Compose a config the way @hydra.main would, turning Hydra's errors into one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(
            f"{hydra_reason(err)} (list the options with `csetrain list`, check keys with `csetrain validate`)"
        ) from None


def hydra_reason(err: Exception) -> str:
    """Hydra's first line plus the line that says why (e.g. "Key 'lrr' is not in struct")."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    cause = str(err.__cause__ or "").strip().splitlines()
    why = (
        cause[0]
        if cause
        else next((ln for ln in lines[1:] if ln.startswith(("Key ", "Value "))), "")
    )
    return f"{lines[0]} {why}".strip()


def is_sweep(args: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in args)


def run_hydra(command: str, config_name: str, task, args: list[str]) -> None:
    """Hand the overrides to @hydra.main, as if `task` were a script called with them."""
    import hydra

    register_resolvers()
    main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(
        task
    )
    argv = sys.argv
    sys.argv = [f"csetrain {command}", *args]
    try:
        main()
    finally:
        sys.argv = argv


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
