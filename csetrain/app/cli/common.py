"""The Typer app every command registers on, and what the commands share: one-line errors and
quiet third-party libraries. Heavy libraries are imported inside commands to keep `--help`
instant."""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    help="Contrastive sentence-embedding experiments: train, evaluate, inspect configs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
OVERRIDES_HELP = (
    "Hydra overrides after the options: group=option (model=tiny), key=value (trainer.lr=1e-5), "
    "-m for a sweep (trainer.lr=1e-5,3e-5), --cfg job to print the composed config."
)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def compose_or_fail(config_name: str, overrides: list[str]):
    """The composed config, or exit with Hydra's reason in one line."""
    from csetrain.app.compose import compose
    from csetrain.config import ConfigError

    try:
        return compose(config_name, overrides)
    except ConfigError as err:
        fail(str(err))


def quiet_libraries() -> None:
    """Library chatter (load reports, hub hints) hides the lines a user needs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
