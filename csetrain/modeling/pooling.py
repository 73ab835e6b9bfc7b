"""Poolers: token states -> one vector per sentence. A closed, parameter-free choice, so a Literal
plus a dict beside the implementations (see DESIGN.md §1.3)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

PoolerName = Literal["cls", "mean", "first_last_avg"]


def cls_pool(hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """The [CLS] token of the last layer: (N, L, D) -> (N, D)."""
    return hidden_states[-1][:, 0]


def _masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    weights = mask.unsqueeze(-1).to(states.dtype)  # (N, L, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def mean_pool(hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """Mean of the last layer over real (non-padding) tokens, as sentence-transformers does."""
    return _masked_mean(hidden_states[-1], mask)


def first_last_avg(hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """Mean over tokens of (first transformer layer + last layer) / 2, the BERT-flow/whitening
    baseline. SimCSE's code averages the *embedding* output with the last layer instead
    (princeton-nlp/SimCSE#285); we follow the papers' definition."""
    return _masked_mean((hidden_states[1] + hidden_states[-1]) / 2, mask)


POOLERS = {"cls": cls_pool, "mean": mean_pool, "first_last_avg": first_last_avg}
NEEDS_ALL_LAYERS = {"first_last_avg"}


def pool(name: str, hidden_states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """Apply the named pooler; (N, L, D) states -> (N, D)."""
    return POOLERS[name](hidden_states, mask)


def check_pooler(name: str) -> str:
    if name not in POOLERS:
        from csetrain.config import ConfigError

        raise ConfigError(f"model.pooler='{name}' is unknown: choose one of {sorted(POOLERS)}")
    return name


__all__ = ["PoolerName", "POOLERS", "pool", "check_pooler"]
