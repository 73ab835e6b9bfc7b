"""Padding-free training forward: a batch's sentences packed end to end into a few rows.

Dynamic padding still pads every sentence to the longest of its batch: on the wiki sentences at
truncation 32, a batch of 64 is only ~66% real tokens, and on a CPU the linear layers cost the
same for padding as for words. Packing lays the sentences side by side in rows of `capacity`
tokens (first-fit decreasing), restarts the position ids at each sentence, and gives the
transformer a block-diagonal attention mask so a token only sees its own sentence. Every
per-token operation (embeddings, linear layers, LayerNorm, dropout) is then the same
computation on fewer padding rows, and attention is masked to the same keys: with dropout off
the packed and padded forwards agree to float rounding (tests/test_packing.py).

Padding slots that remain in a packed row attend only to themselves: a fully masked query row
would give NaN attention, and NaN activations times zero gradient still poison weight gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from csetrain.modeling.attention_mask import additive_mask, allowed_keys, is_decoder

# Position ids of RoBERTa-style models start after the padding index (HF's
# `create_position_ids_from_input_ids`); BERT-style models count from 0.
PADDING_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert"}


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[tuple[int, int]]:
    """(row, offset) for each sequence, longest first into the first row with room."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[int] = []  # room left in each row
    place = [(0, 0)] * len(lengths)
    for i in order:
        row = next((r for r, room in enumerate(free) if room >= lengths[i]), len(free))
        if row == len(free):
            free.append(capacity)
        place[i] = (row, capacity - free[row])
        free[row] -= lengths[i]
    return place


@dataclass
class Packed:
    input_ids: Tensor  # (R, C)
    position_ids: Tensor  # (R, C)
    attention_mask: Tensor  # (R, 1, C, C) bool: True = may attend
    slots: Tensor  # (T,) flat packed slot of each real token, in padded row-major order
    segments: Tensor  # (R, C) sentence of each slot; padding slots a unique negative id each


def pack(input_ids: Tensor, attention_mask: Tensor, pad_id: int, position_offset: int) -> Packed:
    """Padded (N, L) batch (right or left) -> packed rows of capacity 2L (a row holds 2+
    sentences)."""
    n, width = input_ids.shape
    lengths = attention_mask.sum(1)
    capacity = 2 * width
    place = torch.tensor(first_fit_decreasing(lengths.tolist(), capacity), device=input_ids.device)
    rows = int(place[:, 0].max()) + 1
    real = attention_mask.bool()  # (N, L)
    token = (attention_mask.long().cumsum(1) - 1)[real]  # (T,) position within its sentence
    seq = torch.arange(n, device=input_ids.device)[:, None].expand(n, width)[real]  # (T,)
    slots = place[seq, 0] * capacity + place[seq, 1] + token
    ids = torch.full((rows * capacity,), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    ids[slots] = input_ids[real]
    positions = torch.zeros(rows * capacity, dtype=torch.long, device=input_ids.device)
    positions[slots] = token + position_offset
    # Segment id per slot: the sentence index, or a unique negative id for each padding slot.
    segment = -1 - torch.arange(rows * capacity, device=input_ids.device)
    segment[slots] = seq
    segment = segment.view(rows, capacity)
    mask = (segment[:, :, None] == segment[:, None, :]).unsqueeze(1)  # (R, 1, C, C)
    return Packed(ids.view(rows, capacity), positions.view(rows, capacity), mask, slots, segment)


def unpack(states: Tensor, packed: Packed, attention_mask: Tensor) -> Tensor:
    """Packed (R, C, H) states -> the padded layout (N, L, H), zeros at padding."""
    n, width = attention_mask.shape
    flat = states.reshape(-1, states.shape[-1])[packed.slots]  # (T, H)
    out = flat.new_zeros(n * width, states.shape[-1])
    out = out.index_copy(0, attention_mask.reshape(-1).nonzero().squeeze(1), flat)
    return out.view(n, width, -1)


PACKABLE_MODELS = {"bert", *PADDING_OFFSET_MODELS}  # take position_ids and a 4D attention mask


def supports_packing(transformer) -> bool:
    """BERT-family encoders, and decoders (their 4-D mask carries the segments, modeling/
    decoders.py)."""
    return transformer.config.model_type in PACKABLE_MODELS or is_decoder(transformer)


def position_offset(config) -> int:
    if config.model_type in PADDING_OFFSET_MODELS:
        return config.pad_token_id + 1
    return 0


def packed_last_hidden_state(
    transformer, input_ids: Tensor, attention_mask: Tensor, attention: str | None = None
) -> Tensor:
    """The transformer's last hidden states for a padded batch, computed on packed rows. A
    decoder's mask is block-diagonal and, unless `attention='bidirectional'`, causal within
    each block."""
    config = transformer.config
    packed = pack(input_ids, attention_mask, config.pad_token_id or 0, position_offset(config))
    kwargs = {"token_type_ids": torch.zeros_like(packed.input_ids)}
    mask = packed.attention_mask
    if is_decoder(transformer):
        real = (packed.segments >= 0).long()
        causal = attention != "bidirectional"
        mask = additive_mask(allowed_keys(real, causal, packed.segments), transformer.dtype)
        kwargs = {}
    out = transformer(
        input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids, **kwargs
    )
    return unpack(out.last_hidden_state, packed, attention_mask)
