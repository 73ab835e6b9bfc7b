"""Decoder-only backbones (Llama, Mistral, Qwen2/3, Gemma, ...) as sentence encoders.

A decoder differs from BERT in three ways that matter for embeddings, each handled here:

- Attention is causal by default. NV-Embed and LLM2Vec remove the causal mask for contrastive
  training (`model.attention=bidirectional`). We do it through the model's public mask path: the
  forward gets a ready 4-D additive mask (N, 1, L, L), which every transformers decoder passes
  to its attention layers as it is (`masking_utils` returns a 4-D mask unchanged). The same
  mask carries padding and packing's block-diagonal segments, so the three compose.
- Positions come from the mask, not the column: position_ids = cumsum(mask) - 1, so a left-padded
  row gets the same positions (and the same hidden states) as the right-padded one.
- The sentence vector is usually the last real token (`pooler=last_token`), with an EOS token
  appended by the tokenizer's post-processor, so that token has seen the whole sentence.

Attention runs as SDPA where the class has it (else eager); an additive float mask works with
both. FlashAttention-2 takes no 4-D mask, so it is not used here.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModel

from csetrain.config import ConfigError
from csetrain.modeling.attention_mask import additive_mask, allowed_keys, is_decoder, positions
from csetrain.modeling.backbones import (
    Backbone,
    bert_uncased_tokenizer,
    from_pretrained,
    model_kwargs,
    set_dropout,
)

ATTENTION = ("causal", "bidirectional")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_attention(transformer, attention: str | None, pooler: str) -> str | None:
    """`model.attention` for this backbone (None = the architecture's own), and a pooler that
    makes sense with it."""
    check_decoder_pooler(transformer, attention, pooler)
    if attention is None:
        return None
    if attention not in ATTENTION:
        raise ConfigError(
            f"model.attention='{attention}' is unknown: choose causal or bidirectional"
        )
    if not is_decoder(transformer) and attention == "causal":
        raise ConfigError(
            f"model.attention=causal: {transformer.config.model_type} is a bidirectional encoder; "
            "use a decoder (model=tiny_decoder, model=hf_decoder) or model.attention=null"
        )
    return attention


def check_decoder_pooler(transformer, attention: str | None, pooler: str) -> None:
    """A causal decoder's first token has seen only itself: CLS pooling would give every
    sentence the same vector."""
    if pooler in ("cls",) and is_decoder(transformer) and attention != "bidirectional":
        raise ConfigError(
            f"model.pooler={pooler}: a causal decoder's first token sees only itself (every "
            "sentence would embed alike); use model.pooler=last_token or mean, or "
            "model.attention=bidirectional"
        )


def forward_kwargs(transformer, attention_mask: Tensor, attention: str | None) -> dict:
    """The mask (and for a decoder, position) kwargs of one padded forward of `transformer`."""
    if not is_decoder(transformer):
        return {"attention_mask": attention_mask}
    return decoder_inputs(transformer, attention_mask, attention)


def decoder_inputs(
    transformer, attention_mask: Tensor, attention: str | None, segments: Tensor | None = None
) -> dict:
    """The forward kwargs of a decoder: the 4-D mask of `attention` (None: causal) and positions
    from the mask (`segments` given: the caller's packed positions are kept)."""
    causal = attention != "bidirectional"
    allowed = allowed_keys(attention_mask, causal, segments)
    kwargs = {"attention_mask": additive_mask(allowed, transformer.dtype)}
    if segments is None:
        kwargs["position_ids"] = positions(attention_mask)
    return kwargs


# Tiny random decoders: head_dim set to hidden/heads where the config has one (Qwen3 and Gemma
# default to 128/256, far from tiny); sliding windows as wide as the position table (no window in effect).
def tiny_decoder(
    architecture: str = "llama",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 37,
    dropout: float = 0.1,
    init_seed: int = 0,
    padding_side: str = "right",
) -> Backbone:
    """A randomly initialised decoder (llama, mistral, qwen2, qwen3, gemma, ...) for tests and
    quick runs, with bert-base-uncased's WordPiece vocabulary: [CLS] opens and [SEP] (the EOS)
    closes every text, so last-token pooling reads a token that has seen the whole sentence."""
    if padding_side not in ("right", "left"):
        raise ConfigError(f"model.backbone.padding_side='{padding_side}': choose right or left")
    tokenizer = bert_uncased_tokenizer()
    tokenizer.padding_side = padding_side
    sizes = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    try:
        config = AutoConfig.for_model(architecture, **sizes)
    except ValueError as err:
        raise ConfigError(f"model.backbone.architecture='{architecture}': {err}") from None
    if hasattr(config, "head_dim"):
        config.head_dim = hidden_size // num_heads
    if getattr(config, "sliding_window", None):
        config.sliding_window = config.max_position_embeddings
    set_dropout(config, dropout)
    with torch.random.fork_rng(devices=[]):  # same weights whatever the global seed
        torch.manual_seed(init_seed)
        model = AutoModel.from_config(config, **model_kwargs(config))
    if not is_decoder(model):
        raise ConfigError(
            f"model.backbone.architecture='{architecture}' is not a decoder: use model=tiny for encoders"
        )
    source = f"tiny-{architecture}(h={hidden_size},L={num_layers},{padding_side}-padded)"
    return Backbone(model=model, tokenizer=tokenizer, source=source)


def append_eos(tokenizer) -> None:
    """Make every tokenized text end with the EOS token (E5-Mistral, NV-Embed, Qwen3-Embedding:
    the last token then has seen the whole text). Through the tokenizer's own post-processor
    (`add_eos_token` where the class has it, else a TemplateProcessing), so the exported
    tokenizer, and sentence-transformers with it, appends it too."""
    eos = tokenizer.eos_token
    if eos is None:
        raise ConfigError("model.append_eos=true: the tokenizer has no EOS token; set it false")
    probe = tokenizer("a b")["input_ids"]
    if probe[-1] == tokenizer.eos_token_id:
        return
    has_bos = tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id
    if "add_eos_token" in dir(tokenizer):  # rebuilds the template: keep the BOS as it was
        tokenizer.add_bos_token, tokenizer.add_eos_token = has_bos, True
        if tokenizer("a b")["input_ids"] == [*probe, tokenizer.eos_token_id]:
            return
    from tokenizers.processors import TemplateProcessing

    bos = tokenizer.bos_token if has_bos else None
    opening = f"{bos} " if bos else ""
    specials = [(t, tokenizer.convert_tokens_to_ids(t)) for t in dict.fromkeys([bos, eos]) if t]
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{opening}$A {eos}", pair=f"{opening}$A {eos} $B {eos}", special_tokens=specials
    )


def pretrained_decoder(
    name_or_path: str,
    dtype: str = "fp32",
    padding_side: str | None = None,
    dropout: float | None = None,
    eos: bool = True,
) -> Backbone:
    """Any AutoModel decoder checkpoint, its weights in `dtype` (bf16 on a GPU halves memory;
    LoRA adapters stay float32). A tokenizer without a pad token pads with its EOS; `eos`
    appends the EOS token to every text (`append_eos`)."""
    if dtype not in DTYPES:
        raise ConfigError(f"model.backbone.dtype='{dtype}': choose one of {sorted(DTYPES)}")
    backbone = from_pretrained(name_or_path, dropout, DTYPES[dtype])
    tokenizer = backbone.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        backbone.model.config.pad_token_id = tokenizer.eos_token_id
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if eos:
        append_eos(tokenizer)
    return backbone


def hf_decoder(
    name_or_path: str,
    dtype: str = "fp32",
    padding_side: str | None = None,
    dropout: float | None = None,
    append_eos: bool = True,
    **encoder_settings,
):
    """`model=hf_decoder model.name_or_path=...`: a SentenceEncoder on any AutoModel decoder."""
    from csetrain.modeling.encoder import SentenceEncoder

    backbone = pretrained_decoder(name_or_path, dtype, padding_side, dropout, append_eos)
    return SentenceEncoder(backbone, **encoder_settings)
