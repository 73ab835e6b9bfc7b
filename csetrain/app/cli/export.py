"""`csetrain export RUN`: a run's selected checkpoint as a sentence-transformers folder with its
model card; `--format onnx` adds ONNX, `--format mlflow` logs it with MLflow's flavor,
`--push REPO_ID` uploads it to the Hugging Face Hub (docs/export.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from csetrain.app.cli.common import app, fail, quiet_libraries
from csetrain.app.cli.runs import EXPERIMENT, URI


@app.command()
def export(
    run: str = typer.Argument(..., help="Run id, id prefix (as `runs list` prints) or run dir."),
    to: Path = typer.Option(None, "--to", help="Folder to write (default <run dir>/export/model)."),
    formats: list[str] = typer.Option(
        ["st"], "--format", "-f", help="st | onnx | mlflow (repeatable; each includes st)."
    ),
    dim: int = typer.Option(None, "--dim", help="Matryoshka prefix size (objective=2dmse runs)."),
    layer: int = typer.Option(None, "--layer", help="Pool this layer (objective=2dmse runs)."),
    quantize: bool = typer.Option(
        False, "--int8", help="With onnx: also int8 dynamic quantisation, scored on STS-B test."
    ),
    register_as: str = typer.Option(
        None,
        "--register-as",
        help="With mlflow: register under this name (default tracking.register_as).",
    ),
    push: str = typer.Option(
        None, "--push", help="Upload the folder to this hub repo (user/name)."
    ),
    uri: str = URI,
    experiment: str = EXPERIMENT,
) -> None:
    """Ship a run: the dev-selected checkpoint with a model card generated from its records."""
    from csetrain.app.cli.runs import _resolve
    from csetrain.app.export import ExportRequest, export_run
    from csetrain.config import CsetrainError

    quiet_libraries()
    record = _resolve(uri, experiment, run)
    if record["status"] == "LOCAL":
        fail(
            f"{run} has no MLflow run in {uri}: the card is read from the run's records; pass --uri of its store"
        )
    request = ExportRequest(list(formats), to, dim, layer, quantize, register_as)
    try:
        if push:  # refuse before the work when the upload cannot happen from here
            from csetrain.app.hub import check_push_environment

            check_push_environment(push)
        made = export_run(uri, record, request)
        if push:
            from csetrain.app.hub import push as push_folder

            made["pushed"] = push_folder(Path(made["folder"]), push)
    except CsetrainError as err:
        fail(str(err))
    for key, value in made.items():
        if value:
            typer.echo(f"{key}: {value}")
