"""Reading a sentence-transformers folder: `modules.json` and each module's own config, into the
settings a SentenceEncoder is rebuilt from. Only what a SentenceEncoder can express is accepted
(Transformer, Pooling with one mode, csetrain's two Dense shapes, Normalize, csetrain's latent
attention); any other module is a one-line error naming it, never silently dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from csetrain.config import ConfigError

# sentence-transformers' Pooling keys for each pooler we have (a folder sets exactly one).
ST_POOLING = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    "last_token": "pooling_mode_lasttoken",
}
# sentence-transformers >= 5 writes one `pooling_mode` value instead of the boolean keys
ST_MODE_NAMES = {"lasttoken": "last_token", "mean_sqrt_len_tokens": "mean_sqrt_len"}
UNSUPPORTED_MODES = ("pooling_mode_weightedmean_tokens",)
TANH = "torch.nn.modules.activation.Tanh"
IDENTITY = "torch.nn.modules.linear.Identity"
LATENT_MODULE = "LatentAttentionPooling"


@dataclass
class FolderModules:
    """What a folder's modules ask of the encoder, in their order."""

    transformer_dir: Path
    pooler: str | None = None  # None: no Pooling module (csetrain's latent attention or cls)
    include_prompt: bool = True
    head_dir: Path | None = None  # a square Dense + tanh: mlp_head=always
    dim: int | None = None  # a bias-free identity Dense that keeps the first `dim` coordinates
    normalize: bool = False
    latent_attention: bool = False
    max_seq_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({err}); re-export the model") from None


def read_pooling(folder: Path) -> tuple[str, bool]:
    """(pooler, include_prompt) from a Pooling module's config.json."""
    config = _json(folder / "config.json")
    if "pooling_mode" in config:  # sentence-transformers >= 5.x writes a single key
        chosen = [ST_MODE_NAMES.get(config["pooling_mode"], config["pooling_mode"])]
    else:
        chosen = [name for name, key in ST_POOLING.items() if config.get(key)]
        chosen += [key for key in UNSUPPORTED_MODES if config.get(key)]
    if len(chosen) != 1 or chosen[0] not in ST_POOLING:
        raise ConfigError(
            f"{folder / 'config.json'}: pooling {chosen or 'none'} cannot be loaded; "
            f"csetrain reads exactly one of {sorted(ST_POOLING)}"
        )
    return chosen[0], bool(config.get("include_prompt", True))


def _read_dense(folder: Path, modules: FolderModules) -> None:
    """csetrain's two Dense shapes: the SimCSE head (square, bias, tanh) and the `dim` cut."""
    config = _json(folder / "config.json")
    activation = config.get("activation_function")
    square = config.get("in_features") == config.get("out_features")
    if activation == TANH and square and config.get("bias", True) and modules.head_dir is None:
        modules.head_dir = folder
    elif activation == IDENTITY and not config.get("bias", True) and modules.dim is None:
        modules.dim = int(config["out_features"])
    else:
        raise ConfigError(
            f"{folder}: a Dense module ({config.get('in_features')} -> {config.get('out_features')}, "
            f"{activation}) cannot be loaded; csetrain reads a square tanh head or a truncation"
        )


def read_modules(path: Path) -> FolderModules:
    """The folder's modules.json (absent: a plain Hugging Face folder, pooled by cls)."""
    if not (path / "modules.json").is_file():
        return FolderModules(transformer_dir=path)
    modules = FolderModules(transformer_dir=path)
    for entry in _json(path / "modules.json"):
        kind, folder = entry.get("type", "").rsplit(".", 1)[-1], path / entry.get("path", "")
        if kind == "Transformer":
            modules.transformer_dir = folder
        elif kind == "Pooling":
            modules.pooler, modules.include_prompt = read_pooling(folder)
        elif kind == "Dense":
            _read_dense(folder, modules)
        elif kind == "Normalize":
            modules.normalize = True
        elif kind == LATENT_MODULE:
            modules.latent_attention = True
        else:
            raise ConfigError(
                f"{path / 'modules.json'}: module '{entry.get('type')}' cannot be loaded; "
                "csetrain reads Transformer, Pooling, Dense, Normalize"
            )
    _read_settings(path, modules)
    return modules


def _read_settings(path: Path, modules: FolderModules) -> None:
    """max_seq_length (sentence_bert_config.json as sentence-transformers < 6 writes it, else
    the tokenizer's model_max_length, where 6.x keeps it) and the prompts."""
    folder = modules.transformer_dir
    length = None
    if (folder / "sentence_bert_config.json").is_file():
        length = _json(folder / "sentence_bert_config.json").get("max_seq_length")
    if length is None and (folder / "tokenizer_config.json").is_file():
        length = _json(folder / "tokenizer_config.json").get("model_max_length")
        length = length if isinstance(length, int) and length < 1_000_000 else None  # "unset"
    modules.max_seq_length = int(length) if length else None
    if (path / "config_sentence_transformers.json").is_file():
        settings = _json(path / "config_sentence_transformers.json")
        modules.prompts = dict(settings.get("prompts") or {})
        modules.default_prompt_name = settings.get("default_prompt_name")
