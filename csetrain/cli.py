"""The `csetrain` command: Typer outside, Hydra inside (so `-m` sweeps, `--cfg job` and every
override work). Heavy libraries are imported inside commands to keep `--help` instant."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

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


def compose(config_name: str, overrides: list[str]):
    """Compose a config the way @hydra.main would, turning Hydra's errors into one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from csetrain.config import config_dir, register_resolvers

    register_resolvers()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        fail(
            f"{hydra_reason(err)} (list the options with `csetrain list`, check keys with `csetrain validate`)"
        )


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

    from csetrain.config import config_dir, register_resolvers

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


def guarded(fn, errors: list):
    """Run a job; a user error becomes one recorded line instead of a traceback. In a sweep any
    failure is recorded (its MLflow run is already FAILED) and the sweep goes on."""
    from csetrain.config import CsetrainError

    def task(cfg):
        sweeping = is_sweep(sys.argv)
        try:
            return fn(cfg)
        except CsetrainError as err:
            errors.append(str(err))
            if not sweeping:
                return None
            typer.echo(f"error: {err}", err=True)
        except Exception as err:
            if not sweeping:
                raise
            import traceback

            traceback.print_exc()
            errors.append(f"{type(err).__name__}: {err}")
        return float("nan")  # Optuna records NaN as a failed trial

    return task


def run_command(command: str, config_name: str, args: list[str], job, json_out: bool) -> None:
    """Shared body of `train` and `eval`: validate, run through Hydra, report."""
    quiet_libraries()
    plain = not is_sweep(args) and not any(a.startswith("--") for a in args)
    if plain:
        cfg = compose(config_name, args)  # bad overrides fail here, in one line
        from csetrain.config import ConfigError, validate_settings

        try:
            validate_settings(cfg)
        except ConfigError as err:
            fail(str(err))
    results, errors = [], []

    def task(cfg):
        out = job(cfg)
        results.append(out)
        return out.selection_metric

    run_hydra(command, config_name, guarded(task, errors), args)
    if errors and not results:
        fail(errors[-1])
    if errors:  # a sweep with failed jobs: the others ran; say so in the exit code
        typer.echo(f"error: {len(errors)} job(s) failed; first: {errors[0]}", err=True)
        raise typer.Exit(1)
    if json_out and results:
        payload = [r.metrics for r in results] if len(results) > 1 else results[-1].metrics
        typer.echo(json.dumps(payload))


@app.command(context_settings=HYDRA_ARGS, help=f"Train an encoder. {OVERRIDES_HELP}")
def train(
    ctx: typer.Context,
    json_out: bool = typer.Option(
        False, "--json", help="Print the final metrics as one JSON object on the last line."
    ),
) -> None:
    def job(cfg):
        from csetrain.train import run_training

        summary = run_training(cfg)
        tests = {
            k: v
            for k, v in summary.metrics.items()
            if k.startswith("test/") and k.endswith(("/spearman", "/spearman_all"))
        }
        scores = ", ".join(f"{k} {v:.2f}" for k, v in tests.items())
        if "eval/best_step" in summary.metrics:
            step = summary.metrics["eval/best_step"]
            best = f"best dev {summary.selection_metric:.2f} at step {step:.0f}"
        else:
            best = "no dev evaluation (trainer.eval_every=0): the last step was tested"
        typer.echo(f"done: {best}; {scores}", err=True)
        typer.echo(summary.where(), err=True)
        return summary

    run_command("train", "train", ctx.args, job, json_out)


@app.command(
    "eval",
    context_settings=HYDRA_ARGS,
    help=f"Evaluate a model option or a saved folder (model=saved model.path=DIR). {OVERRIDES_HELP}",
)
def evaluate(
    ctx: typer.Context,
    json_out: bool = typer.Option(
        False, "--json", help="Print the metrics as one JSON object on the last line."
    ),
) -> None:
    def job(cfg):
        from csetrain.evaluate import run_evaluation

        return run_evaluation(cfg)

    run_command("eval", "evaluate", ctx.args, job, json_out)


@app.command("list")
def list_options(
    group: str = typer.Argument(
        None, help="A config group (model, objective, ...); all groups if omitted."
    ),
) -> None:
    """List the options of each config group (the YAML files under conf/<group>/)."""
    from csetrain.config import config_dir

    root = config_dir()
    groups = (
        [group]
        if group
        else sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "hydra")
    )
    for name in groups:
        folder = root / name
        if not folder.is_dir():
            fail(
                f"no config group '{name}': choose from {sorted(p.name for p in root.iterdir() if p.is_dir())}"
            )
        typer.echo(f"{name}:")
        for yaml in sorted(folder.glob("*.yaml")):
            typer.echo(f"  {yaml.stem:28s} {_describe(yaml)}")


def _describe(path: Path) -> str:
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

    from csetrain.config import ConfigError, instantiate, validate_settings

    cfg = compose("train", ctx.args)
    try:
        validate_settings(cfg)
        for group in ("augmentation", "negative_mining", "data"):
            instantiate(cfg[group])  # cheap builders: catches unknown keys and bad targets
        for group in ("dev_eval", "eval"):
            if cfg[group].protocol not in ("senteval", "mteb"):
                raise ConfigError(
                    f"{group}.protocol='{cfg[group].protocol}': choose senteval or mteb"
                )
    except ConfigError as err:
        fail(str(err))
    except Exception as err:  # instantiate wraps bad keys in its own exception types
        fail(str(err).strip().splitlines()[0])
    if show:
        typer.echo(OmegaConf.to_yaml(cfg))
    typer.echo("ok: config composes and its settings validate")


if __name__ == "__main__":
    app()
