"""`csetrain list` and `csetrain validate`: the options of each config group, and a config
composed and checked without running it."""

from __future__ import annotations

from pathlib import Path

import typer

from csetrain.app.cli.common import (
    HYDRA_ARGS,
    OVERRIDES_HELP,
    app,
    compose_or_fail,
    fail,
    quiet_libraries,
)


@app.command("list")
def list_options(
    group: str = typer.Argument(
        None, help="A config group (model, objective, ...); all groups if omitted."
    ),
) -> None:
    """List the options of each config group (the YAML files under conf/<group>/)."""
    from csetrain.app.settings import config_dir

    root = config_dir()
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    groups = [group] if group else [name for name in folders if name != "hydra"]
    for name in groups:
        folder = root / name
        if not folder.is_dir():
            fail(f"no config group '{name}': choose from {folders}")
        typer.echo(f"{name}:")
        for yaml in sorted(folder.glob("*.yaml")):
            typer.echo(f"  {yaml.stem:28s} {describe(yaml)}")


def describe(path: Path) -> str:
    """The first comment line of an option's YAML is its description."""
    for line in path.read_text().splitlines():
        if line.startswith("# @package"):
            continue
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


@app.command(
    context_settings=HYDRA_ARGS,
    help=f"Compose and check a training config without running it. {OVERRIDES_HELP}",
)
def validate(
    ctx: typer.Context,
    show: bool = typer.Option(False, "--show", help="Print the composed config."),
) -> None:
    quiet_libraries()
    from omegaconf import OmegaConf

    from csetrain.app.components import after_training, build_miner
    from csetrain.app.settings import instantiate, plain, validate_settings
    from csetrain.config import ConfigError

    cfg = compose_or_fail("train", ctx.args)
    try:
        validate_settings(cfg)
        # cheap builders: catch unknown keys and bad targets
        instantiate(cfg.augmentation)
        build_miner(cfg)
        reader = plain(cfg.data)
        reader.pop("instruction", None)  # applied by the run, not a reader argument
        instantiate(reader)
        for group in ("dev_eval", "eval"):
            if cfg[group].protocol not in ("senteval", "mteb"):
                raise ConfigError(
                    f"{group}.protocol='{cfg[group].protocol}': choose senteval or mteb"
                )
        after_training(cfg)
    except ConfigError as err:
        fail(str(err))
    except Exception as err:  # instantiate wraps bad keys in its own exception types
        fail(str(err).strip().splitlines()[0])
    if show:
        typer.echo(OmegaConf.to_yaml(cfg))
    typer.echo("ok: config composes and its settings validate")
