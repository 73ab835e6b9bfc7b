"""`csetrain runs list|compare|best|baselines|sync` (runs read back from a tracking store) and
`csetrain ui` (the MLflow UI on the same store)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from csetrain.app.cli.common import app, fail, quiet_libraries

runs_app = typer.Typer(
    help="Read runs back from a tracking store: list, compare, best.", no_args_is_help=True
)
app.add_typer(runs_app, name="runs")
URI = typer.Option(
    "sqlite:///outputs/mlflow.db", "--uri", help="Tracking URI (any MLflow store or server)."
)
EXPERIMENT = typer.Option("csetrain", "--experiment", "-e", help="MLflow experiment name.")


def _read_runs(uri: str, experiment: str, limit: int = 200) -> list[dict]:
    from csetrain.app.store.queries import read_runs
    from csetrain.config import ConfigError

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
    from csetrain.app.store.queries import read_run, runs_tagged
    from csetrain.config import ConfigError

    if Path(ref).is_dir():  # the store's run for that dir if there is one, else its own files
        from csetrain.app.reports.tables import local_run

        folder = Path(ref).resolve()
        try:
            logged = (
                runs_tagged(uri, experiment, "run_dir", str(folder)) if _store_exists(uri) else []
            )
        except ConfigError as err:
            fail(str(err))
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
    from csetrain.app.reports.tables import DEFAULT_METRICS, list_table

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
    from csetrain.app.reports.leaderboard import leaderboard_table, summary_keys
    from csetrain.app.reports.tables import (
        compare_table,
        pair_scores_for,
        paired_table,
        ui_compare_link,
    )
    from csetrain.eval.pair_scores import FILE_NAME as PAIR_SCORES

    quiet_libraries()
    first, second = _resolve(uri, experiment, a), _resolve(uri, experiment, b)
    typer.echo(compare_table(first, second))
    if summary_keys([first, second]):  # eval=mteb runs: the leaderboard view too
        typer.echo("\n" + leaderboard_table(first, second))
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
    from csetrain.app.reports.tables import best_run

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
    from csetrain.app.reports.baselines import reference_runs
    from csetrain.app.reports.tables import table
    from csetrain.app.store.references import write_reference_runs
    from csetrain.config import TrackingConfig

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
    """Replay what could not reach the tracking store during a run (metrics, tags, artifacts, its end)."""
    from csetrain.app.store.retry import sync_spilled

    if not path.is_file():
        fail(f"{path} not found: it is written in the run dir when a store stays unreachable")
    from csetrain.config import CsetrainError

    try:
        typer.echo(f"sent {sync_spilled(uri, path)} metrics to {uri}")
    except CsetrainError as err:  # the store is still down: nothing was lost, retry later
        fail(str(err))


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
