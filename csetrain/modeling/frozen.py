"""A frozen encoder (a distillation teacher, a similarity model) held *outside* its owner's
module registry, so it is never optimised, never checkpointed, and never put back in train mode.

An objective is an `nn.Module`: assigning an encoder to one of its attributes would register it
as a submodule, putting its weights in `objective.parameters()` (hence in the optimizer, which
train.py builds from encoder + objective parameters) and in `objective.state_dict()`. The
`FrozenEncoder` holder is a plain Python object, so `nn.Module.__setattr__` does not register
what it holds; it turns gradients off, keeps eval mode, runs under `no_grad`, and follows the
batch to its device on first use (the owner's `.to(device)` does not reach it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import Batch


def field_rows(batch: Batch, name: str) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask (B, L) of one field of a field-major batch, own padding
    trimmed."""
    start = batch.fields.index(name) * batch.size
    ids = batch.input_ids[start : start + batch.size]
    mask = batch.attention_mask[start : start + batch.size]
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width]


class FrozenEncoder:
    """A SentenceEncoder (any `model` option) used for inference only. `key` is the config key
    named in errors (e.g. `objective.teacher`)."""

    def __init__(self, encoder: nn.Module, key: str) -> None:
        encoder.requires_grad_(False)
        encoder.eval()
        self.encoder = encoder
        self.key = key
        self._checked_tokenizer = None

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    def check_tokenizer(self, student_tokenizer) -> None:
        """The frozen encoder reads the student's token ids as they are, so both must map ids to
        the same tokens (minilm-l6 and tiny share bert-base-uncased's WordPiece)."""
        if student_tokenizer is self._checked_tokenizer:
            return
        if student_tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ConfigError(
                f"{self.key} has a different tokenizer from the trained model's, and it reads the "
                "batch's token ids as they are: choose a model option with the same vocabulary "
                "(e.g. minilm-l6 or tiny, both bert-base-uncased WordPiece)"
            )
        self._checked_tokenizer = student_tokenizer

    @torch.no_grad()
    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Inference embeddings (N, D) in float32: the layer/dim/head the option evaluates with."""
        if self.encoder.device != input_ids.device:
            self.encoder.to(input_ids.device)
        self.encoder.eval()
        return self.encoder.inference(input_ids, attention_mask).float()
