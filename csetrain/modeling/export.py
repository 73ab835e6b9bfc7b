"""The sentence-transformers folder format: what a trained encoder is saved as, and loaded from.

Written in the format sentence-transformers has always read (modules.json + per-module folders),
so `SentenceTransformer(path)` loads it and gives the same embeddings, without importing that
library (~8 s) in the training process. `csetrain.json` adds what we need to rebuild exactly.
An inference `layer` is exported by keeping only the first `layer` transformer layers; an
inference `dim` by a final bias-free Dense whose weight is the identity's first `dim` rows.
Prefix encoders (embeddings concatenated before the model's own) are saved as csetrain folders
`prefix_<i>/` inside the folder; only csetrain's loader concatenates them.

`pooler=latent_attention` has no stock sentence-transformers module: it is saved as the custom
module `1_LatentAttention/` (config.json + model.safetensors) with its source file
`latent_attention.py` beside modules.json. csetrain reloads it from the weights alone; plain
sentence-transformers (>= 6) loads it only with `trust_remote_code=True` (it then imports that
file, which needs torch and safetensors only) and refuses it otherwise.
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from csetrain.config import ConfigError
from csetrain.modeling.backbones import from_pretrained
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.latent_attention import LatentAttention
from csetrain.modeling.lora import has_lora, merged, save_adapter
from csetrain.modeling.st_folder import ST_POOLING, read_modules

ACTIVATIONS = {
    "tanh": "torch.nn.modules.activation.Tanh",
    "identity": "torch.nn.modules.linear.Identity",
}
DENSE_TYPE = "sentence_transformers.models.Dense"
LATENT_DIR = "1_LatentAttention"
LATENT_TYPE = "latent_attention.LatentAttentionPooling"  # the copied source file, then the class


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_dense(
    folder: Path, weight: torch.Tensor, bias: torch.Tensor | None, activation: str
) -> None:
    config = {
        "in_features": weight.shape[1],
        "out_features": weight.shape[0],
        "bias": bias is not None,
        "activation_function": ACTIVATIONS[activation],
    }
    _write_json(folder / "config.json", config)
    tensors = {"linear.weight": weight.detach().cpu().contiguous()}
    if bias is not None:
        tensors["linear.bias"] = bias.detach().cpu().contiguous()
    save_file(tensors, str(folder / "model.safetensors"))


def _inference_transformer(encoder: SentenceEncoder):
    """The transformer as inference sees it: LoRA adapters merged into (a copy of) its weights,
    cut after `encoder.layer` if one is chosen."""
    model = merged(encoder.transformer) if has_lora(encoder.transformer) else encoder.transformer
    if encoder.layer is None or encoder.layer == encoder.num_layers:
        return model
    model = copy.deepcopy(model)
    for path in LAYER_LISTS:
        owner = model
        for name in path[:-1]:
            owner = getattr(owner, name, None)
        if isinstance(getattr(owner, path[-1], None), torch.nn.ModuleList):
            setattr(owner, path[-1], getattr(owner, path[-1])[: encoder.layer])
            model.config.num_hidden_layers = encoder.layer
            return model
    raise ConfigError(
        f"model.layer={encoder.layer}: cannot cut {type(model).__name__}'s layers for export; "
        "export the full model (model.layer=null)"
    )


# Where an architecture keeps its layer stack: BERT-like encoder.layer, DistilBERT's
# transformer.layer, ModernBERT's layers.
LAYER_LISTS = (("encoder", "layer"), ("transformer", "layer"), ("layers",))


def save_sentence_transformer(
    encoder: SentenceEncoder, path: str | Path, metadata: dict | None = None
) -> Path:
    """Write `encoder`'s inference model as a sentence-transformers folder at `path` (new)."""
    if encoder.pooler not in ST_POOLING and encoder.pooler != "latent_attention":
        raise ConfigError(
            f"model.pooler='{encoder.pooler}' has no sentence-transformers equivalent; export supports {sorted(ST_POOLING)} and latent_attention"
        )
    path = Path(path)
    _inference_transformer(encoder).save_pretrained(path, safe_serialization=True)
    save_adapter(encoder.transformer, path)
    if encoder.attention == "bidirectional":
        _declare_bidirectional(path / "config.json")
    encoder.tokenizer.save_pretrained(path)
    modules = [("", "sentence_transformers.models.Transformer"), _write_pooling(encoder, path)]
    if encoder.mlp_head == "always":  # a train-only head is not part of the inference model
        modules.append(("2_Dense", DENSE_TYPE))
        _write_dense(path / "2_Dense", encoder.head[0].weight, encoder.head[0].bias, "tanh")
    if encoder.dim:
        name = f"{len(modules)}_Truncate"
        modules.append((name, DENSE_TYPE))
        _write_dense(path / name, torch.eye(encoder.hidden_size)[: encoder.dim], None, "identity")
    if encoder.normalize:
        modules.append((f"{len(modules)}_Normalize", "sentence_transformers.models.Normalize"))
    entries = [{"idx": i, "name": str(i), "path": p, "type": t} for i, (p, t) in enumerate(modules)]
    _write_json(path / "modules.json", entries)
    limit = encoder.max_length
    _write_json(
        path / "sentence_bert_config.json", {"max_seq_length": limit, "do_lower_case": False}
    )
    _write_json(
        path / "config_sentence_transformers.json",
        {
            "similarity_fn_name": "cosine",
            "prompts": encoder.prompts,
            "default_prompt_name": encoder.default_prompt_name,
        },
    )
    info = {
        "pooler": encoder.pooler,
        "mlp_head": encoder.mlp_head,
        "dim": encoder.dim,
        "source": encoder.source,
        "layer_of_trained_model": encoder.layer,
        "attention": encoder.attention,
    }
    # Encoders whose embeddings precede this one's (MCL's earlier stages): sentence-transformers
    # has no module for parallel transformers, so they are csetrain folders of their own.
    for i, prefix in enumerate(encoder.prefix_encoders):
        save_sentence_transformer(prefix, path / f"prefix_{i}")
        info.setdefault("prefix_encoders", []).append(f"prefix_{i}")
    _write_json(path / "csetrain.json", {**info, **(metadata or {})})
    return path


def _declare_bidirectional(config_file: Path) -> None:
    """A decoder trained without its causal mask: `is_causal: false` in its config.json makes
    transformers build bidirectional masks (masking_utils), so sentence-transformers' plain
    2-D-mask forward computes what training did."""
    config = json.loads(config_file.read_text())
    _write_json(config_file, {**config, "is_causal": False})


def _write_pooling(encoder: SentenceEncoder, path: Path) -> tuple[str, str]:
    """The pooling module's folder; returns its (folder, type) for modules.json."""
    if encoder.pooler == "latent_attention":
        encoder.pooling_layer.save(path / LATENT_DIR)
        source = Path(inspect.getfile(LatentAttention))
        shutil.copyfile(source, path / source.name)  # what sentence-transformers imports
        return LATENT_DIR, LATENT_TYPE
    pooling = {
        "word_embedding_dimension": encoder.hidden_size,
        **dict.fromkeys(ST_POOLING.values(), False),
        "include_prompt": encoder.include_prompt,
    }
    pooling[ST_POOLING[encoder.pooler]] = True
    _write_json(path / "1_Pooling" / "config.json", pooling)
    return "1_Pooling", "sentence_transformers.models.Pooling"


def _read_latent_attention(path: Path) -> LatentAttention:
    folder = path / LATENT_DIR
    try:
        return LatentAttention.load(folder)
    except Exception as err:  # missing, corrupt or truncated files
        raise ConfigError(
            f"{folder}: cannot load the latent-attention pooler ({err}); re-export the model"
        ) from None


def _load_head(encoder: SentenceEncoder, folder: Path) -> None:
    try:
        weights = load_file(str(folder / "model.safetensors"))
        encoder.head[0].load_state_dict(
            {"weight": weights["linear.weight"], "bias": weights["linear.bias"]}
        )
    except Exception as err:  # corrupt or truncated file
        raise ConfigError(
            f"{folder / 'model.safetensors'}: cannot load ({err}); re-export the model"
        ) from None


def load_sentence_encoder(
    path: str | Path,
    pooler: str | None = None,
    dropout: float | None = None,
    layer: int | None = None,
    dim: int | None = None,
) -> SentenceEncoder:
    """Rebuild a SentenceEncoder from a folder saved by csetrain or sentence-transformers, as its
    modules.json declares (st_folder.py); `pooler`/`layer`/`dim` override what was saved."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise ConfigError(
            f"{path} is not a saved model folder (no config.json): set model.path to a folder written by csetrain or sentence-transformers"
        )
    info = _read_info(path)
    modules = read_modules(path)
    saved_pooler = "latent_attention" if modules.latent_attention else modules.pooler
    pooler = pooler or info.get("pooler") or saved_pooler or "cls"
    latent = _read_latent_attention(path) if pooler == "latent_attention" else None
    encoder = SentenceEncoder(
        from_pretrained(str(modules.transformer_dir), dropout),
        pooler=pooler,
        mlp_head="always" if modules.head_dir else "none",
        layer=layer,
        dim=dim or info.get("dim") or modules.dim,
        latent_attention=latent.sizes() if latent is not None else None,
        attention=info.get("attention"),
    )
    if latent is not None:
        encoder.pooling_layer.load_state_dict(latent.state_dict())
    if modules.head_dir:
        _load_head(encoder, modules.head_dir)
    encoder.normalize, encoder.max_seq_length = modules.normalize, modules.max_seq_length
    encoder.prompts, encoder.default_prompt_name = modules.prompts, modules.default_prompt_name
    encoder.include_prompt = modules.include_prompt
    encoder.source = info.get("source", str(path))
    encoder.prefix_encoders = [
        load_sentence_encoder(path / p) for p in info.get("prefix_encoders", [])
    ]
    return encoder


def _read_info(path: Path) -> dict:
    """csetrain.json: what csetrain adds to rebuild its own folders exactly ({} elsewhere)."""
    if not (path / "csetrain.json").is_file():
        return {}
    return json.loads((path / "csetrain.json").read_text())
