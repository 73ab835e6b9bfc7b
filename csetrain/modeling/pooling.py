"""Poolers: token states -> one vector per sentence. A closed choice, so a Literal plus a dict
beside the implementations, not a registry of classes. The parameter-free ones are functions here; a
pooler with weights (`latent_attention`, csetrain/modeling/latent_attention.py) is a layer the
encoder owns, so it is trained, checkpointed and exported with the model."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

PoolerName = Literal[
    "cls", "mean", "max", "mean_sqrt_len", "last_token", "first_last_avg", "latent_attention"
]


def cls_pool(hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """The first pooled token of the last layer, as sentence-transformers takes it: [CLS] under
    right padding; the first token after the prompt when pooling excludes the prompt (with
    [CLS], csetrain/modeling/prompts.py). (N, L, D) -> (N, D)."""
    first = mask.to(torch.int32).argmax(dim=1)  # (N,)
    return hidden_states[-1][torch.arange(mask.shape[0], device=mask.device), first]


def _masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    weights = mask.unsqueeze(-1).to(states.dtype)  # (N, L, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def mean_pool(hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """Mean of the last layer over real (non-padding) tokens, as sentence-transformers does."""
    return _masked_mean(hidden_states[-1], mask)


def max_pool(hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """Per-coordinate max of the last layer over real tokens (sentence-transformers' max)."""
    states = hidden_states[-1]
    padding = (mask == 0).unsqueeze(-1)  # (N, L, 1)
    return states.masked_fill(padding, torch.finfo(states.dtype).min).max(dim=1).values


def mean_sqrt_len_pool(hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """Sum of the last layer over real tokens / sqrt(their count) (sentence-transformers')."""
    weights = mask.unsqueeze(-1).to(hidden_states[-1].dtype)
    total = (hidden_states[-1] * weights).sum(1)
    return total / weights.sum(1).clamp(min=1e-9).sqrt()


def last_token_pool(hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """The last real token of each row, under right or left padding (decoder embedders)."""
    length = mask.shape[1]
    last = length - 1 - mask.flip(1).to(torch.long).argmax(dim=1)  # (N,) position of the last 1
    return hidden_states[-1][torch.arange(mask.shape[0], device=mask.device), last]


def first_last_avg(hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """Mean over tokens of (first transformer layer + last layer) / 2, the BERT-flow/whitening
    baseline. SimCSE's code averages the *embedding* output with the last layer instead
    (princeton-nlp/SimCSE#285); we follow the papers' definition."""
    return _masked_mean((hidden_states[1] + hidden_states[-1]) / 2, mask)


POOLERS = {
    "cls": cls_pool,
    "mean": mean_pool,
    "max": max_pool,
    "mean_sqrt_len": mean_sqrt_len_pool,
    "last_token": last_token_pool,
    "first_last_avg": first_last_avg,
}
NEEDS_ALL_LAYERS = {"first_last_avg"}
TRAINED_POOLERS = {"latent_attention"}  # poolers with weights: a layer the encoder owns


def pool(
    name: str, hidden_states: tuple[Tensor, ...], mask: Tensor, layer: nn.Module | None = None
) -> Tensor:
    """Apply the named pooler (a trained one through its `layer`); (N, L, D) states -> (N, D)."""
    if name in TRAINED_POOLERS:
        if layer is None:
            raise ValueError(f"pooler '{name}' has weights: pass the encoder's pooling_layer")
        return layer(hidden_states[-1], mask)
    return POOLERS[name](hidden_states, mask)


def check_pooler(name: str) -> str:
    if name not in POOLERS and name not in TRAINED_POOLERS:
        from csetrain.config import ConfigError

        choices = sorted(set(POOLERS) | TRAINED_POOLERS)
        raise ConfigError(f"model.pooler='{name}' is unknown: choose one of {choices}")
    return name


LATENT_ATTENTION_KEYS = ("num_latents", "heads", "dim_head", "mlp_mult")


def pooling_layer(name: str, hidden_size: int, settings: dict | None) -> nn.Module | None:
    """The weights of a trained pooler (None for the parameter-free ones). `settings` are the
    `model.latent_attention` sizes; missing keys take the paper's values."""
    if name not in TRAINED_POOLERS:
        return None
    from csetrain.config import ConfigError
    from csetrain.modeling.latent_attention import LatentAttention

    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(LATENT_ATTENTION_KEYS))
    if unknown:
        raise ConfigError(
            f"model.latent_attention has unknown keys {unknown}: use {list(LATENT_ATTENTION_KEYS)}"
        )
    for key, value in settings.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"model.latent_attention.{key}={value}: must be a positive integer")
    return LatentAttention(hidden_size, **{k: v for k, v in settings.items() if v is not None})


__all__ = ["PoolerName", "POOLERS", "pool", "check_pooler", "pooling_layer"]
