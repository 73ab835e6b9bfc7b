"""`csetrain train` and `csetrain eval`: Typer outside, Hydra inside (so `-m` sweeps, `--cfg job`
and every override work); both go through one runner."""

from __future__ import annotations

import json
import os
import sys
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


def guarded(fn, errors: list):
    """Run a job; a user error becomes one recorded line instead of a traceback. In a sweep any
    failure is recorded (its MLflow run is already FAILED) and the sweep goes on."""
    from csetrain.app.compose import is_sweep
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


def rank_args(args: list[str]) -> list[str]:
    """Under torchrun only rank 0 owns a run directory; other ranks run Hydra in a scratch dir."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        return args
    import tempfile

    scratch = Path(tempfile.gettempdir()) / f"csetrain-rank{rank}"
    return [
        *args,
        "hydra.output_subdir=null",
        f"hydra.run.dir={scratch}",
        "hydra/job_logging=disabled",
    ]


HYDRA_DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir")


def check_hydra_dirs(args: list[str]) -> None:
    """An overridden Hydra run or sweep dir that cannot be written fails in one line naming the
    key, before Hydra tries to create it (and raises a traceback)."""
    from csetrain.app.context import check_writable
    from csetrain.config import ConfigError

    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key not in HYDRA_DIR_KEYS or not value or "$" in value:
            continue  # an interpolation is resolved (and checked) by paths.output_dir
        try:
            check_writable(Path(value), min_free=0)
        except ConfigError:
            fail(f"{key}={value} is not a writable directory: set {key} to one (or drop it)")


def run_command(command: str, config_name: str, args: list[str], job, json_out: bool) -> None:
    """Shared body of `train` and `eval`: validate, run through Hydra, report."""
    from csetrain.app.compose import is_sweep, run_hydra

    quiet_libraries()
    if not is_sweep(args) and not any(a.startswith("--") for a in args):
        cfg = compose_or_fail(config_name, args)  # bad overrides fail here, in one line
        from csetrain.app.context import check_writable
        from csetrain.app.settings import validate_settings
        from csetrain.config import ConfigError

        try:  # Hydra creates the run dir before the job could check it
            check_writable(Path(validate_settings(cfg).paths.output_dir))
        except ConfigError as err:
            fail(str(err))
    check_hydra_dirs(args)
    results, errors = [], []

    def task(cfg):
        out = job(cfg)
        results.append(out)
        return out.selection_metric  # what a sweeper (Optuna) maximises

    run_hydra(command, config_name, guarded(task, errors), rank_args(args))
    if errors and not results:
        fail(errors[-1])
    if errors:  # a sweep with failed jobs: the others ran; say so in the exit code
        typer.echo(f"error: {len(errors)} job(s) failed; first: {errors[0]}", err=True)
        raise typer.Exit(1)
    if json_out and results:
        payload = [r.metrics for r in results] if len(results) > 1 else results[-1].metrics
        typer.echo(json.dumps(payload))


def report_training(summary) -> None:
    """The end of `csetrain train`'s output: the selection, the test scores, where to look."""
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


@app.command(context_settings=HYDRA_ARGS, help=f"Train an encoder. {OVERRIDES_HELP}")
def train(
    ctx: typer.Context,
    json_out: bool = typer.Option(
        False, "--json", help="Print the final metrics as one JSON object on the last line."
    ),
) -> None:
    def job(cfg):
        from csetrain.app.train import train as train_run

        summary = train_run(cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            report_training(summary)
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
        from csetrain.app.evaluate import run_evaluation

        return run_evaluation(cfg)

    run_command("eval", "evaluate", ctx.args, job, json_out)
