"""SentenceEncoder: backbone + pooler + optional MLP head, with batched, deduplicated encoding."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from csetrain.modeling.backbones import Backbone
from csetrain.modeling.pooling import NEEDS_ALL_LAYERS, check_pooler, pool

HeadMode = Literal["none", "train_only", "always"]


class SentenceEncoder(nn.Module):
    """Encodes token batches into sentence vectors.

    `mlp_head` follows SimCSE: a fresh Linear(h, h) + tanh after the pooler. `train_only` is
    SimCSE's `mlp_only_train` (the head shapes training but every embedding extraction, dev
    evaluation included, uses the raw pooled vector: `cls_before_pooler`); `always` keeps it at
    test time (supervised SimCSE's `cls`).
    """

    def __init__(
        self,
        backbone: Backbone,
        pooler: str = "cls",
        mlp_head: HeadMode = "none",
    ) -> None:
        super().__init__()
        if mlp_head not in ("none", "train_only", "always"):
            from csetrain.config import ConfigError

            raise ConfigError(
                f"model.mlp_head='{mlp_head}' is unknown: choose none, train_only or always"
            )
        self.transformer = backbone.model
        self.tokenizer = backbone.tokenizer
        self.source = backbone.source
        self.pooler = check_pooler(pooler)
        self.mlp_head = mlp_head
        hidden = self.transformer.config.hidden_size
        self.head = None
        if mlp_head != "none":
            self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
            # SimCSE builds the head fresh and initialises it like the encoder's own layers.
            nn.init.normal_(self.head[0].weight, std=self.transformer.config.initializer_range)
            nn.init.zeros_(self.head[0].bias)

    @property
    def dim(self) -> int:
        return self.transformer.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def pooled(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled transformer output before any head: (N, L) -> (N, D)."""
        need_all = self.pooler in NEEDS_ALL_LAYERS
        out = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_all
        )
        states = out.hidden_states if need_all else (out.last_hidden_state,)
        return pool(self.pooler, states, attention_mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, apply_head: bool = True) -> Tensor:
        """Training-time embeddings (the head, if any, applied): (N, L) -> (N, D)."""
        z = self.pooled(input_ids, attention_mask)
        if apply_head and self.head is not None:
            z = self.head(z)
        return z

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, Tensor]:
        """Pad to the longest text; truncate only at `max_length` (None: the model's limit)."""
        limit = max_length or self.transformer.config.max_position_embeddings
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )

    @torch.no_grad()
    def encode(self, sentences: list[str], batch_size: int = 128, progress: bool = False) -> Tensor:
        """Inference embeddings (N, D), float32 on CPU, in input order.

        Each distinct sentence is encoded once, in batches of similar token length (sorting by
        tokens, not characters, pads least), with no truncation below the model's limit.
        """
        from tqdm.auto import tqdm

        unique = list(dict.fromkeys(sentences))
        lengths = [len(ids) for ids in self.tokenizer(unique, add_special_tokens=True)["input_ids"]]
        order = sorted(range(len(unique)), key=lambda i: -lengths[i])
        was_training = self.training
        self.eval()
        vectors = torch.empty(len(unique), self.dim)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="encode", disable=not progress, leave=False):
            idx = order[start : start + batch_size]
            batch = self.tokenize([unique[i] for i in idx])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            z = self(
                batch["input_ids"], batch["attention_mask"], apply_head=self.mlp_head == "always"
            )
            vectors[idx] = z.float().cpu()
        self.train(was_training)
        position = {s: i for i, s in enumerate(unique)}
        return vectors[[position[s] for s in sentences]]
