"""The sentence-transformers folder format: what a trained encoder is saved as, and loaded from.

Written in the format sentence-transformers has always read (modules.json + per-module folders),
so `SentenceTransformer(path)` loads it and gives the same embeddings, without importing that
library (~8 s) in the training process. `csetrain.json` adds what we need to rebuild exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from csetrain.config import ConfigError
from csetrain.modeling.backbones import from_pretrained
from csetrain.modeling.encoder import SentenceEncoder

ST_POOLING = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens"}
POOLING_KEYS = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
)
TANH = "torch.nn.modules.activation.Tanh"


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def save_sentence_transformer(
    encoder: SentenceEncoder, path: str | Path, metadata: dict | None = None
) -> Path:
    """Write `encoder` as a sentence-transformers folder at `path` (which must not exist yet)."""
    if encoder.pooler not in ST_POOLING:
        raise ConfigError(
            f"model.pooler='{encoder.pooler}' has no sentence-transformers equivalent; export supports {sorted(ST_POOLING)}"
        )
    path = Path(path)
    encoder.transformer.save_pretrained(path, safe_serialization=True)
    encoder.tokenizer.save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    pooling = {"word_embedding_dimension": encoder.dim, **dict.fromkeys(POOLING_KEYS, False)}
    pooling[ST_POOLING[encoder.pooler]] = True
    _write_json(path / "1_Pooling" / "config.json", pooling)
    if encoder.mlp_head == "always":  # a train-only head is not part of the inference model
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
        )
        dense = {
            "in_features": encoder.dim,
            "out_features": encoder.dim,
            "bias": True,
            "activation_function": TANH,
        }
        _write_json(path / "2_Dense" / "config.json", dense)
        linear = encoder.head[0]
        save_file(
            {
                "linear.weight": linear.weight.detach().cpu().contiguous(),
                "linear.bias": linear.bias.detach().cpu().contiguous(),
            },
            str(path / "2_Dense" / "model.safetensors"),
        )
    _write_json(path / "modules.json", modules)
    limit = encoder.transformer.config.max_position_embeddings
    _write_json(
        path / "sentence_bert_config.json", {"max_seq_length": limit, "do_lower_case": False}
    )
    _write_json(
        path / "config_sentence_transformers.json",
        {"similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": None},
    )
    info = {"pooler": encoder.pooler, "mlp_head": encoder.mlp_head, "source": encoder.source}
    _write_json(path / "csetrain.json", {**info, **(metadata or {})})
    return path


def _read_st_pooling(path: Path) -> str:
    config = json.loads((path / "1_Pooling" / "config.json").read_text())
    chosen = [name for name, key in ST_POOLING.items() if config.get(key)]
    if "pooling_mode" in config:  # sentence-transformers >= 5.x writes a single key
        chosen = [config["pooling_mode"]] if config["pooling_mode"] in ST_POOLING else []
    if len(chosen) != 1:
        raise ConfigError(
            f"{path / '1_Pooling' / 'config.json'}: only cls or mean pooling can be loaded"
        )
    return chosen[0]


def load_sentence_encoder(
    path: str | Path, pooler: str | None = None, dropout: float | None = None
) -> SentenceEncoder:
    """Rebuild a SentenceEncoder from a folder saved by csetrain or sentence-transformers."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{path} is not a saved model folder (no config.json): set model.path to a folder written by csetrain or sentence-transformers"
        )
    info = (
        json.loads((path / "csetrain.json").read_text())
        if (path / "csetrain.json").is_file()
        else {}
    )
    has_dense = (path / "2_Dense" / "config.json").is_file()
    saved_pooler = info.get("pooler") or (
        _read_st_pooling(path) if (path / "1_Pooling").is_dir() else "cls"
    )
    encoder = SentenceEncoder(
        from_pretrained(str(path), dropout),
        pooler=pooler or saved_pooler,
        mlp_head="always" if has_dense else "none",
    )
    if has_dense:
        try:
            weights = load_file(str(path / "2_Dense" / "model.safetensors"))
            encoder.head[0].load_state_dict(
                {"weight": weights["linear.weight"], "bias": weights["linear.bias"]}
            )
        except Exception as err:  # corrupt or truncated file
            raise ConfigError(
                f"{path / '2_Dense' / 'model.safetensors'}: cannot load ({err}); re-export the model"
            ) from None
    encoder.source = info.get("source", str(path))
    return encoder
