"""ONNX: a sentence-transformers folder's transformer as `onnx/model.onnx`, and an encoder that
runs it with onnxruntime. The only module importing onnx / onnxruntime (tests/test_layout.py).

The graph is the transformer alone (inputs `input_ids`, `attention_mask`[, `token_type_ids`],
output `last_hidden_state`, batch and sequence axes dynamic), which is what
sentence-transformers' `backend="onnx"` (through optimum's ORTModelForFeatureExtraction) loads
from `<folder>/onnx/model.onnx`; pooling, a Dense cut and Normalize stay the folder's own modules,
so every backend shares them. Exported with `torch.onnx.export(dynamo=True)`, the exporter the
PyTorch ecosystem now uses. `model_qint8.onnx` is onnxruntime's dynamic int8 quantisation of it
(weights int8, activations quantised per batch at run time).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from csetrain.config import ConfigError
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.export import load_sentence_encoder

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"  # optimum's ONNX_WEIGHTS_NAME: what backend="onnx" loads by default
INT8_FILE = "model_qint8.onnx"  # load with model_kwargs={"file_name": "onnx/model_qint8.onnx"}
OPSET = 18


class _LastHiddenState(nn.Module):
    """The transformer as a function of tensors only (what the exporter traces)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs))).last_hidden_state


def input_names(encoder: SentenceEncoder) -> list[str]:
    """The graph's inputs: BERT-likes also take token_type_ids (all zero for one segment)."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in encoder.tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


def _example(encoder: SentenceEncoder, names: list[str]) -> tuple[torch.Tensor, ...]:
    # Two rows of different lengths, so padding and the masked path are traced as they run.
    batch = encoder.tokenizer(
        ["an example sentence to trace", "short"], padding=True, return_tensors="pt"
    )
    if "token_type_ids" in names and "token_type_ids" not in batch:
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return tuple(batch[name] for name in names)


def export_onnx(folder: str | Path, quantize: bool = False) -> list[Path]:
    """Write `<folder>/onnx/model.onnx` (fp32) from the folder's transformer, and with `quantize`
    its dynamic int8 twin; returns the files written."""
    folder = Path(folder)
    encoder = load_sentence_encoder(folder).eval()
    if encoder.prefix_encoders or encoder.pooler == "latent_attention":
        raise ConfigError(
            f"{folder}: stacked encoders and pooler=latent_attention have no ONNX export; export --format st"
        )
    names = input_names(encoder)
    target = folder / ONNX_DIR / FP32_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet():
        torch.onnx.export(
            _LastHiddenState(encoder.transformer, names),
            _example(encoder, names),
            str(target),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_shapes={"inputs": tuple({0: batch, 1: sequence} for _ in names)},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    written = [target]
    if quantize:
        written.append(quantize_int8(target))
    return written


def quantize_int8(fp32: Path) -> Path:
    """onnxruntime's dynamic quantisation: int8 weights, activations quantised at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = fp32.with_name(INT8_FILE)
    with _quiet():
        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8)
    return target


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines and warns per op, the quantiser logs advice on the
    root logger; a user needs only the result (errors still raise)."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


class OnnxBackbone(nn.Module):
    """An onnxruntime session standing in for the transformer: called as the encoder calls its
    backbone, returning `.last_hidden_state`, so pooling and the rest of `SentenceEncoder`
    run unchanged on its output."""

    def __init__(self, path: Path, config, threads: int = 0) -> None:
        import onnxruntime as ort

        super().__init__()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.config = config
        # A parameterless module has no device; this empty tensor says "CPU" to the encoder.
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, input_ids, attention_mask, output_hidden_states=False, **_):
        if output_hidden_states:
            raise ConfigError("the ONNX graph returns the last layer only; pool the last layer")
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        feeds["token_type_ids"] = torch.zeros_like(input_ids)
        arrays = {name: feeds[name].cpu().numpy() for name in self.names}
        (states,) = self.session.run(["last_hidden_state"], arrays)
        return _Output(torch.from_numpy(states))


class _Output:
    def __init__(self, last_hidden_state: torch.Tensor) -> None:
        self.last_hidden_state = last_hidden_state


def load_onnx_encoder(
    folder: str | Path, file_name: str = FP32_FILE, threads: int = 0
) -> SentenceEncoder:
    """The folder's encoder with its transformer replaced by `onnx/<file_name>` on onnxruntime:
    `encode` and every evaluator work on it as on the PyTorch one."""
    folder = Path(folder)
    path = folder / ONNX_DIR / file_name
    if not path.is_file():
        raise ConfigError(f"{path} not found: export it with `csetrain export RUN --format onnx`")
    encoder = load_sentence_encoder(folder).eval()
    encoder.transformer = OnnxBackbone(path, encoder.transformer.config, threads)
    return encoder
