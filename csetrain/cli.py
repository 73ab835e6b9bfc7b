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
            settings = validate_settings(cfg)
            from csetrain.train import check_writable  # Hydra creates the run dir first

            check_writable(Path(settings["paths"].output_dir))
        except ConfigError as err:
            fail(str(err))
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:  # torchrun: only rank 0 owns a run directory and prints
        import tempfile

        scratch = Path(tempfile.gettempdir()) / f"csetrain-rank{rank}"
        args = [
            *args,
            "hydra.output_subdir=null",
            f"hydra.run.dir={scratch}",
            "hydra/job_logging=disabled",
        ]
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
        if int(os.environ.get("RANK", "0")) > 0:
            return summary
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


runs_app = typer.Typer(
    help="Read runs back from a tracking store: list, compare, best.", no_args_is_help=True
)
app.add_typer(runs_app, name="runs")
URI = typer.Option(
    "sqlite:///outputs/mlflow.db", "--uri", help="Tracking URI (any MLflow store or server)."
)
EXPERIMENT = typer.Option("csetrain", "--experiment", "-e", help="MLflow experiment name.")


def _read_runs(uri: str, experiment: str, limit: int = 200) -> list[dict]:
    from csetrain.config import ConfigError
    from csetrain.tracking import read_runs

    if not _store_exists(uri):
        fail(f"no MLflow store at {uri}: train something first or pass --uri")
    try:
        return read_runs(uri, experiment, max_results=limit)
    except ConfigError as err:
        fail(str(err))


def _store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def _resolve(uri: str, experiment: str, ref: str) -> dict:
    """A run by id or id prefix (as `runs list` prints it), or by its run dir."""
    from csetrain.config import ConfigError
    from csetrain.tracking import read_run, read_runs

    if Path(ref).is_dir():  # the store's run for that dir if there is one, else its own files
        from csetrain.runs import local_run

        folder = Path(ref).resolve()
        logged = (
            read_runs(uri, experiment, f"tags.run_dir = '{folder}'") if _store_exists(uri) else []
        )
        return logged[0] if logged else local_run(folder)
    matches = [r for r in _read_runs(uri, experiment) if r["id"].startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    try:
        return read_run(uri, ref)
    except ConfigError as err:
        fail(
            str(err)
            if not matches
            else f"run prefix '{ref}' is ambiguous in experiment '{experiment}'"
        )


@runs_app.command("list")
def runs_list(
    uri: str = URI,
    experiment: str = EXPERIMENT,
    limit: int = typer.Option(20, help="Newest N runs."),
    metric: list[str] = typer.Option(None, "--metric", "-m", help="Metric columns (repeatable)."),
) -> None:
    """A table of runs: status, group choices and key metrics."""
    from csetrain.runs import DEFAULT_METRICS, list_table

    quiet_libraries()
    runs = _read_runs(uri, experiment, limit)
    typer.echo(
        list_table(runs, tuple(metric) if metric else DEFAULT_METRICS) if runs else "no runs"
    )


@runs_app.command("compare")
def runs_compare(
    a: str,
    b: str,
    uri: str = URI,
    experiment: str = EXPERIMENT,
    ui_url: str = typer.Option("http://127.0.0.1:5000", help="Where `csetrain ui` serves."),
    resamples: int = typer.Option(1000, min=1, help="Bootstrap resamples of the test pairs."),
    seed: int = typer.Option(0, help="Seed of the bootstrap resampling."),
) -> None:
    """Config and metric differences of two runs (ids, prefixes or run dirs), a paired bootstrap
    test on their per-pair test similarities, and the UI link to the same view."""
    from csetrain.eval.pair_scores import FILE_NAME as PAIR_SCORES
    from csetrain.runs import compare_table, pair_scores_for, paired_table, ui_compare_link

    quiet_libraries()
    first, second = _resolve(uri, experiment, a), _resolve(uri, experiment, b)
    typer.echo(compare_table(first, second))
    pairs = [pair_scores_for(run, uri) for run in (first, second)]
    if None in pairs:
        which = " and ".join(n for n, p in zip("AB", pairs) if p is None)
        typer.echo(f"\npaired bootstrap: skipped ({which} saved no {PAIR_SCORES})")
    else:
        typer.echo("\n" + paired_table(*pairs, resamples, seed))
    if first["experiment_id"] and second["experiment_id"]:
        typer.echo(f"\nMLflow UI: {ui_compare_link(ui_url, first, second)}")


@runs_app.command("best")
def runs_best(
    uri: str = URI,
    experiment: str = EXPERIMENT,
    metric: str = typer.Option("eval/best", help="Selection metric (dev, never test)."),
    json_out: bool = typer.Option(False, "--json", help="Print the run as JSON."),
) -> None:
    """The finished run with the highest value of a metric."""
    from csetrain.runs import best_run

    quiet_libraries()
    best = best_run(_read_runs(uri, experiment), metric)
    if best is None:
        fail(f"no FINISHED run with metric '{metric}' in experiment '{experiment}'")
    typer.echo(
        json.dumps(best)
        if json_out
        else f"{best['id']}  {metric}={best['metrics'][metric]:.2f}  {best['name']}"
    )


@runs_app.command("baselines")
def runs_baselines(uri: str = URI, experiment: str = EXPERIMENT) -> None:
    """Write the papers' published STS tables into the store as reference runs (tag
    csetrain.reference=true) under our metric keys; running it again adds nothing."""
    from csetrain.baselines import reference_runs
    from csetrain.config import TrackingConfig
    from csetrain.runs import table
    from csetrain.tracking import write_reference_runs

    quiet_libraries()
    refs = reference_runs()
    written = write_reference_runs(TrackingConfig(uri=uri, experiment=experiment), refs)
    rows = [
        [ref["tags"]["eval.protocol"], ref["name"].removeprefix("published: "), run_id[:8], what]
        for ref, (run_id, what) in zip(refs, written)
    ]
    typer.echo(table(rows, ["protocol", "reference", "run", ""]))
    typer.echo(
        f"experiment '{experiment}' at {uri}: filter with tags.`csetrain.reference` = 'true'"
    )


@runs_app.command("sync")
def runs_sync(
    path: Path = typer.Argument(
        ..., help="unsynced_metrics.jsonl written by a run whose store was down."
    ),
    uri: str = URI,
) -> None:
    """Replay metrics that could not reach the tracking store during a run."""
    from csetrain.tracking import sync_spilled

    if not path.is_file():
        fail(f"{path} not found: it is written in the run dir when a store stays unreachable")
    typer.echo(f"sent {sync_spilled(uri, path)} metrics to {uri}")


@app.command()
def ui(
    store: str = typer.Option("sqlite:///outputs/mlflow.db", "--store", help="Backend store URI."),
    host: str = typer.Option("127.0.0.1", help="Bind address (loopback unless you mean it)."),
    port: int = typer.Option(5000, help="Port."),
) -> None:
    """Start the MLflow UI/server against the project's store (needs `pip install 'csetrain[ui]'`)."""
    import importlib.util

    if (
        importlib.util.find_spec("mlflow.server.handlers") is None
        or importlib.util.find_spec("flask") is None
    ):
        fail("the MLflow UI needs the full mlflow package: pip install 'csetrain[ui]'")
    typer.echo(f"MLflow UI on http://{host}:{port} (store {store}); Ctrl-C stops it", err=True)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    os.execv(sys.executable, cmd)  # become the server: signals (Ctrl-C, SIGTERM) reach it directly


if __name__ == "__main__":
    app()
