"""`csetrain export`: a run's selected checkpoint shipped as a sentence-transformers folder with
its model card, optionally with ONNX (fp32, int8) beside it and logged with MLflow's flavor.

The checkpoint is the one dev selection saved (`checkpoints/best/`, or the run's `model`
artifact when the run dir is gone); one selected on a test metric is refused. A Matryoshka
run (objective=2dmse) can be exported at any layer and one of the prefix sizes it trained.
"""

from __future__ import annotations

import ast
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from csetrain.app.card import card_record
from csetrain.app.store.queries import read_run
from csetrain.checkpoint import replace_dir, write_text_atomic
from csetrain.config import ConfigError
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer
from csetrain.modeling.model_card import render_card

FORMATS = ("st", "onnx", "mlflow")
MATRYOSHKA = "Matryoshka2D"


@dataclass
class ExportRequest:
    formats: list[str] = field(default_factory=lambda: ["st"])
    to: Path | None = None
    dim: int | None = None
    layer: int | None = None
    quantize: bool = False
    register_as: str | None = None


def selected_checkpoint(uri: str, run: dict, scratch: Path) -> Path:
    """The run's dev-selected model folder: its run dir's, else its MLflow `model` artifact."""
    from csetrain.app.store.queries import download_artifact

    best = Path(run["tags"].get("run_dir", "")) / "checkpoints" / "best"
    if not (best / "csetrain.json").is_file():
        best = download_artifact(uri, run["id"], "model", scratch) or best
    if not (Path(best) / "csetrain.json").is_file():
        raise ConfigError(
            f"run {run['id']} has no selected checkpoint (no checkpoints/best/ in its run dir, no model artifact); was it trained with tracking.log_model=true?"
        )
    selected_by = json.loads((Path(best) / "csetrain.json").read_text()).get("selected_by", "")
    if selected_by.startswith("test/") or "/test/" in selected_by:
        raise ConfigError(
            f"run {run['id']}'s checkpoint was selected on a test metric ({selected_by}); export only dev-selected runs"
        )
    return Path(best)


def check_size(run: dict, hidden_size: int, num_layers: int, dim, layer) -> None:
    """--dim/--layer only for runs trained for them (2D Matryoshka), within what they trained."""
    if dim is None and layer is None:
        return
    target = run["params"].get("objective._target_", "")
    if not target.endswith(MATRYOSHKA):
        raise ConfigError(
            f"--dim/--layer: run {run['id']} was trained with {target.rsplit('.', 1)[-1] or 'an unknown objective'}, not objective=2dmse; export it at its own size"
        )
    if layer is not None and not 1 <= layer <= num_layers:
        raise ConfigError(f"--layer {layer}: choose 1..{num_layers}")
    if dim is not None and dim not in (sizes := trained_sizes(run, hidden_size)):
        raise ConfigError(f"--dim {dim}: the run trained the prefix sizes {sizes}")


def trained_sizes(run: dict, hidden_size: int) -> list[int]:
    from csetrain.objectives.matryoshka_2d import geometric_dims

    raw = run["params"].get("objective.dims", "None")
    dims = None if raw in ("None", "null") else ast.literal_eval(raw)
    return sorted({*(dims or geometric_dims(hidden_size)), hidden_size})


def export_run(uri: str, run: dict, request: ExportRequest) -> dict:
    """Write the folder (and what the formats ask); returns what was made, for the CLI."""
    unknown = [f for f in request.formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"--format {unknown[0]}: choose from {', '.join(FORMATS)}")
    run_dir = Path(run["tags"].get("run_dir", "."))
    target = request.to or run_dir / "export" / _folder_name(request)
    with tempfile.TemporaryDirectory() as scratch:
        best = selected_checkpoint(uri, run, Path(scratch))
        info = json.loads((best / "csetrain.json").read_text())
        encoder = load_sentence_encoder(best, layer=request.layer, dim=request.dim)
        check_size(run, encoder.hidden_size, encoder.num_layers, request.dim, request.layer)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        shutil.rmtree(tmp)  # save_sentence_transformer makes the folder
        keep = {k: info[k] for k in ("step", "selected_by", "value") if k in info}
        save_sentence_transformer(encoder, tmp, {**keep, "run_id": run["id"]})
    try:  # the folder appears whole at `target` or not at all
        made = {"folder": str(target), **_fill(uri, run, tmp, request)}
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "mlflow" in request.formats:
        from csetrain.app.store.model_flavor import log_st_model

        register_as = request.register_as or _param(run, "tracking.register_as")
        # the run as it is now: its metrics (export scores included) tag a registered version
        made.update(log_st_model(uri, read_run(uri, run["id"]), target, register_as))
    return made


def _fill(uri: str, run: dict, folder: Path, request: ExportRequest) -> dict:
    """ONNX files if asked, then the card (last: it shows the scores ONNX logged)."""
    made = {}
    if "onnx" in request.formats:
        made.update(_onnx(uri, run, folder, request.quantize))
        run = read_run(uri, run["id"])  # with the export scores just logged
    export = {k: str(v) for k, v in (("layer", request.layer), ("dim", request.dim)) if v}
    write_text_atomic(folder / "README.md", render_card(card_record(uri, run, folder, export)))
    return made


def _param(run: dict, key: str) -> str | None:
    value = run["params"].get(key)
    return None if value in (None, "None", "null", "") else value


def _folder_name(request: ExportRequest) -> str:
    parts = [f"l{request.layer}" if request.layer else "", f"d{request.dim}" if request.dim else ""]
    return "_".join(p for p in parts if p) or "model"


def _onnx(uri: str, run: dict, folder: Path, quantize: bool) -> dict:
    """ONNX files in the folder; with int8, both ONNX variants scored on the run's STS-B test
    under its protocol, logged onto the run as `export/onnx{,_int8}/...`."""
    from csetrain.modeling.onnx_export import FP32_FILE, INT8_FILE, export_onnx

    files = export_onnx(folder, quantize)
    made = {"onnx": ", ".join(str(f.relative_to(folder)) for f in files)}
    if quantize:
        scores = {}
        for label, name in (("onnx", FP32_FILE), ("onnx_int8", INT8_FILE)):
            scores.update(_stsb_test(run, folder, name, label))
        from csetrain.app.store.model_flavor import log_export_scores

        log_export_scores(uri, run["id"], scores, int(run["metrics"].get("eval/best_step", 0)))
        made["scores"] = json.dumps({k: round(v, 2) for k, v in scores.items()})
    return made


def _stsb_test(run: dict, folder: Path, file_name: str, label: str) -> dict[str, float]:
    from csetrain.eval.sts import STSEvaluator
    from csetrain.modeling.onnx_export import load_onnx_encoder

    protocol = run["params"].get("eval.protocol", "senteval")
    protocol = protocol if protocol in ("senteval", "mteb") else "senteval"
    data_dir = _param(run, "eval.data_dir")
    result = STSEvaluator(["stsb"], "test", protocol, data_dir)(
        load_onnx_encoder(folder, file_name)
    )
    return {f"export/{label}/{k}": v for k, v in result.metrics.items() if k.endswith("spearman")}
