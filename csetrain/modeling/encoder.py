"""SentenceEncoder: backbone + pooler + optional MLP head, with batched, deduplicated encoding."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.modeling.backbones import Backbone
from csetrain.modeling.batching import embed_in_batches
from csetrain.modeling.decoders import adapted, forward_kwargs
from csetrain.modeling.drophead import drop_heads
from csetrain.modeling.momentum import MomentumEncoder
from csetrain.modeling.packing import packed_last_hidden_state, position_offset, supports_packing
from csetrain.modeling.pooling import NEEDS_ALL_LAYERS, check_pooler, pool, pooling_layer
from csetrain.modeling.prompts import default_text, pooling_mask, prompt_length

HeadMode = Literal["none", "train_only", "always"]


@torch.no_grad()
def _frozen_inference(encoder: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """A prefix encoder's inference embedding: eval mode, no gradient, on the inputs' device."""
    if encoder.device != input_ids.device:
        encoder.to(input_ids.device)
    return encoder.eval().inference(input_ids, attention_mask)


class SentenceEncoder(nn.Module):
    """Encodes token batches into sentence vectors.

    `mlp_head` follows SimCSE: a fresh Linear(h, h) + tanh after the pooler. `train_only` is
    SimCSE's `mlp_only_train` (the head shapes training but every embedding extraction, dev
    evaluation included, uses the raw pooled vector: `cls_before_pooler`); `always` keeps it at
    test time (supervised SimCSE's `cls`).

    `layer` and `dim` choose the inference embedding (2D Matryoshka models): pool hidden layer
    `layer` (1..L; None = last) and keep its first `dim` coordinates (None = all). Training
    always sees the full model; objectives that need other layers call `embed_layers`.

    `latent_attention` sizes the trained pooler `pooler=latent_attention` (NV-Embed,
    csetrain/modeling/latent_attention.py); its layer is `pooling_layer`, part of the model.
    """

    def __init__(
        self,
        backbone: Backbone,
        pooler: str = "cls",
        mlp_head: HeadMode = "none",
        layer: int | None = None,
        dim: int | None = None,
        latent_attention: dict | None = None,
        attention: str | None = None,
        lora: dict | None = None,
        include_prompt: bool = True,
        max_seq_length: int | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if mlp_head not in ("none", "train_only", "always"):
            raise ConfigError(
                f"model.mlp_head='{mlp_head}' is unknown: choose none, train_only or always"
            )
        self.transformer = backbone.model
        self.tokenizer = backbone.tokenizer
        self.source = backbone.source
        self.pooler = check_pooler(pooler)
        self.transformer, self.attention = adapted(self.transformer, attention, pooler, lora)
        self.mlp_head = mlp_head
        config = self.transformer.config
        if layer is not None and not 1 <= layer <= config.num_hidden_layers:
            raise ConfigError(
                f"model.layer={layer}: choose 1..{config.num_hidden_layers} or null (last)"
            )
        if dim is not None and not 1 <= dim <= config.hidden_size:
            raise ConfigError(f"model.dim={dim}: choose 1..{config.hidden_size} or null (all)")
        self.layer, self.dim = layer, dim
        # Frozen encoders whose inference embeddings precede this one's (MCL's stages): a plain
        # list, so they are never optimised and never in this module's state_dict.
        self.prefix_encoders: list[SentenceEncoder] = []
        self.packing = False  # training forwards on packed rows (modeling/packing.py)
        # What a sentence-transformers folder declares beyond the layers (modeling/st_folder.py):
        # a final Normalize, its max_seq_length, its prompts and whether pooling includes them.
        self.normalize, self.max_seq_length = normalize, max_seq_length
        self.prompts: dict[str, str] = {}  # by name; default_prompt_name picks one for encode()
        self.default_prompt_name: str | None = None
        self.include_prompt = include_prompt  # False: pooling skips them (modeling/prompts.py)
        self.pooling_layer = pooling_layer(pooler, config.hidden_size, latent_attention)
        self.head = None
        if mlp_head != "none":
            self.head = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.Tanh())
            # SimCSE builds the head fresh and initialises it like the encoder's own layers.
            nn.init.normal_(self.head[0].weight, std=config.initializer_range)
            nn.init.zeros_(self.head[0].bias)

    @property
    def hidden_size(self) -> int:
        return self.transformer.config.hidden_size

    @property
    def output_dim(self) -> int:
        """Size of the inference embedding."""
        return (self.dim or self.hidden_size) + sum(e.output_dim for e in self.prefix_encoders)

    @property
    def num_layers(self) -> int:
        return self.transformer.config.num_hidden_layers

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def max_length(self) -> int:
        """The longest input in tokens: a folder's max_seq_length, else the position table less
        the positions a padding offset uses (RoBERTa-family positions start after the padding
        index: 514 rows, 512 tokens)."""
        limit = self.transformer.config.max_position_embeddings - position_offset(self.config)
        return min(limit, self.max_seq_length or limit)

    @property
    def config(self):
        """The backbone's Hugging Face config (sizes, activation, vocabulary, checkpoint path)."""
        return self.transformer.config

    # --- training embeddings -------------------------------------------------------------------
    def _hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor, all_layers: bool, backbone=None
    ) -> tuple[Tensor, ...]:
        # Packing is a training setting of this encoder's own forward (a momentum copy's keys
        # are computed padded, in eval mode).
        packed = backbone is None and self.packing and self.training and not all_layers
        backbone = self.transformer if backbone is None else backbone
        if packed and supports_packing(backbone):
            return (packed_last_hidden_state(backbone, input_ids, attention_mask, self.attention),)
        masks = forward_kwargs(backbone, attention_mask, self.attention)
        out = backbone(input_ids=input_ids, output_hidden_states=all_layers, **masks)
        return out.hidden_states if all_layers else (out.last_hidden_state,)

    def pooled(
        self, input_ids, attention_mask, layer=None, backbone=None, prompt_length=None
    ) -> Tensor:
        """Pooled output of hidden layer `layer` (None: last), before any head: (N, L) -> (N, D).
        `backbone` replaces the transformer (a momentum copy) while pooling stays this one's;
        `prompt_length`: tokens of a prompt every row starts with (None: found by ids)."""
        all_layers = self.pooler in NEEDS_ALL_LAYERS or layer is not None
        states = self._hidden_states(input_ids, attention_mask, all_layers, backbone)
        if layer is not None:
            states = states[: layer + 1]  # states[0] is the embedding output
        mask = pooling_mask(self, input_ids, attention_mask, prompt_length)
        return pool(self.pooler, states, mask, self.pooling_layer)

    def project(self, z: Tensor) -> Tensor:
        """The training head (SimCSE's MLP) on pooled vectors; the identity without one."""
        return z if self.head is None else self.head(z)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, head: bool = True) -> Tensor:
        """Training-time embeddings (last layer, full size, the head unless `head=False`):
        (N, L) -> (N, D)."""
        z = self.pooled(input_ids, attention_mask)
        return self.project(z) if head else z

    def embed_layers(self, input_ids, attention_mask, head=True, prompt_length=None) -> list:
        """Training embeddings of every transformer layer 1..L from one forward: L x (N, D)."""
        states = self._hidden_states(input_ids, attention_mask, all_layers=True)
        mask = pooling_mask(self, input_ids, attention_mask, prompt_length)
        pooled = [
            pool(self.pooler, states[: k + 1], mask, self.pooling_layer)
            for k in range(1, len(states))
        ]
        return [self.project(z) for z in pooled] if head else pooled

    def token_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The backbone's last hidden states (N, L, H), unpacked (token-level objectives: MLM)."""
        return self._hidden_states(input_ids, attention_mask, False, self.transformer)[-1]

    def input_embeddings(self) -> Tensor:
        """The token embedding matrix (V, H), live (a tied MLM decoder reads it every step)."""
        return self.transformer.get_input_embeddings().weight

    @contextmanager
    def drophead(self, p: float):
        """Training forwards with drophead (whole attention heads dropped per row, probability p);
        padded layout for the duration, since drophead draws per row (modeling/drophead.py)."""
        packing, self.packing = self.packing, self.packing and not p
        try:
            with drop_heads(self.transformer, p):
                yield self
        finally:
            self.packing = packing

    # --- inference embeddings --------------------------------------------------------------------
    def _inference_head(self, z: Tensor) -> Tensor:
        return self.head(z) if self.mlp_head == "always" else z

    def inference(self, input_ids: Tensor, attention_mask: Tensor, prompt_length=None) -> Tensor:
        """The embedding evaluation sees: chosen layer, head only if `always`, first `dim` dims."""
        z = self.pooled(input_ids, attention_mask, self.layer, prompt_length=prompt_length)
        z = self._inference_head(z)
        z = z[:, : self.dim] if self.dim else z
        z = F.normalize(z, dim=-1) if self.normalize else z
        if not self.prefix_encoders:
            return z
        # Each part unit-normalised: the cosine of the concatenation is the mean of the parts'.
        parts = [_frozen_inference(e, input_ids, attention_mask) for e in self.prefix_encoders]
        return torch.cat([F.normalize(p.float(), dim=-1) for p in [*parts, z]], dim=-1)

    def inference_layers(self, input_ids: Tensor, attention_mask: Tensor, prompt_length=None):
        """The inference embedding of every layer 1..L from one forward, without the `dim` cut:
        (N, T) -> (N, L, D). A stack of several encoders has no such grid."""
        if self.prefix_encoders:
            raise ConfigError("eval=grid scores one encoder's layers: this model stacks several")
        layers = self.embed_layers(input_ids, attention_mask, False, prompt_length)
        return torch.stack([self._inference_head(z) for z in layers], dim=1)

    # --- copies and stages -------------------------------------------------------------------------
    def frozen_copy(self) -> SentenceEncoder:
        """A weight-holding copy for inference only (no gradient, eval mode), sharing the tokenizer
        and any earlier stages, without stages of its own."""
        shared = [self.tokenizer, *self.prefix_encoders]
        clone = copy.deepcopy(self, memo={id(obj): obj for obj in shared})
        clone.prefix_encoders = []
        return clone.requires_grad_(False).eval()

    def ema_copy(self, momentum: float) -> MomentumEncoder:
        """An exponential-moving-average copy of the backbone (modeling/momentum.py)."""
        return MomentumEncoder(self, momentum)

    def stack_before(self, encoders: list[SentenceEncoder]) -> None:
        """Frozen encoders whose unit-normalised inference embeddings precede this one's (MCL's
        stages). A plain list: never optimised, never in this module's state_dict."""
        self.prefix_encoders = list(encoders)

    def stacked_before(self) -> list[SentenceEncoder]:
        """The frozen encoders stacked in front of this one (empty for a single encoder)."""
        return list(self.prefix_encoders)

    def snapshot(self) -> dict[str, Tensor]:
        """A detached copy of every weight, for `restore`."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def restore(self, snapshot: dict[str, Tensor]) -> None:
        """Copy a snapshot's weights back in place: the parameter tensors stay the same objects,
        so an optimizer holding them keeps them (and its moment estimates)."""
        self.load_state_dict(snapshot)

    def compile_backbone(self) -> None:
        """torch.compile the transformer in place (state-dict keys unchanged, so checkpoints and
        exports are the same as uncompiled); batch shapes vary with dynamic padding."""
        self.transformer.compile(dynamic=True)

    def checkpoint_activations(self) -> None:  # trainer.gradient_checkpointing
        self.transformer.gradient_checkpointing_enable({"use_reentrant": False})  # RNG restored

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, Tensor]:
        """Pad to the longest text; truncate only at `max_length` (None: the model's limit)."""
        limit = max_length or self.max_length
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )

    @torch.no_grad()
    def encode(
        self, sentences, batch_size=128, progress=False, embed=None, prompt=None, batch_tokens=None
    ) -> Tensor:
        """Inference embeddings (N, output_dim), float32 on CPU, in input order.

        Each distinct sentence is tokenized and encoded once, in batches of similar token length
        (sorted by tokens, not characters: least padding), truncated only at the model's limit;
        a batch holds <= `batch_size` sentences and, on a CPU, <= `batch_tokens` padded tokens
        (modeling/batching.py). `embed(input_ids, attention_mask) -> (n, ...)` replaces
        `inference` (the layer x dim grid takes every layer from one forward; result (N, ...)).
        `prompt` goes before every sentence (None: the default prompt), as in sentence-transformers.
        """
        embed = embed or self.inference
        unique = list(dict.fromkeys(sentences))
        limit, prompt = self.max_length, default_text(self) if prompt is None else prompt
        texts = [prompt + s for s in unique]
        ids = self.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
        length = prompt_length(self.tokenizer, prompt, limit)
        was_training, embed = self.training, partial(embed, prompt_length=length)
        vectors = embed_in_batches(
            self.eval(),
            self.tokenizer,
            ids,
            embed,
            batch_size,
            self.output_dim,
            batch_tokens,
            progress,
        )
        self.train(was_training)
        position = {s: i for i, s in enumerate(unique)}
        return vectors[[position[s] for s in sentences]]
