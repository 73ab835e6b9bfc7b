"""Packed training forwards: the row plan, the round trip, and equality with the padded forward
(BERT and RoBERTa position ids), including gradients.

The equality tests run in float64: packed rows are wider than padded ones, so the attention and
linear sums run in another order, and float32 rounding of that order differs between CPUs.
"""

import torch
from transformers import RobertaConfig, RobertaModel

from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.packing import (
    first_fit_decreasing,
    pack,
    packed_last_hidden_state,
    unpack,
)

from .tolerances import assert_float64_close


def _batch(lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask  # pad id 0 right of each sentence


def test_first_fit_decreasing_by_hand():
    # 5 -> row 0; 4 does not fit row 0 (3 left) -> row 1; 3 -> row 0 at 5; 2 -> row 1 at 4.
    assert first_fit_decreasing([5, 3, 4, 2], 8) == [(0, 0), (0, 5), (1, 0), (1, 4)]


def test_pack_unpack_round_trip_and_masks():
    ids, mask = _batch([6, 2, 5, 1, 3], width=6)
    packed = pack(ids, mask, pad_id=0, position_offset=0)
    rows, capacity = packed.input_ids.shape
    assert capacity == 12 and rows * capacity < ids.numel() * 2  # fewer slots than 2x padded
    assert packed.input_ids.ne(0).sum() == mask.sum()  # every real token once, nothing else
    back = unpack(packed.input_ids[..., None].float(), packed, mask)[..., 0].long()
    assert torch.equal(back, ids)
    # A token attends exactly to the tokens of its own sentence; padding slots to themselves.
    allowed = packed.attention_mask[:, 0]
    per_slot = allowed.sum(-1).flatten()
    lengths = torch.zeros(rows * capacity, dtype=torch.long)
    lengths[packed.slots] = mask.sum(1).repeat_interleave(mask.sum(1))
    expected = torch.where(lengths > 0, lengths, torch.ones_like(lengths))
    assert torch.equal(per_slot, expected)
    assert torch.equal(packed.position_ids.flatten()[packed.slots], mask.nonzero()[:, 1])


def _compare(transformer, ids, mask):
    transformer.double().eval()  # no dropout: both layouts compute the same function
    padded = transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    packed = packed_last_hidden_state(transformer, ids, mask)
    real = mask.bool()
    assert_float64_close(packed[real], padded[real])
    assert torch.all(packed[~real] == 0)


def test_packed_equals_padded_bert():
    ids, mask = _batch([7, 3, 9, 1, 4, 9, 2], width=9)
    ids[:, 0] = 101  # [CLS]
    _compare(tiny().model, ids, mask)


def test_packed_equals_padded_roberta_position_offset():
    config = RobertaConfig(
        vocab_size=2100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=40, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = RobertaModel(config, add_pooling_layer=False)
    ids, mask = _batch([5, 8, 2], width=8)
    ids = torch.where(mask.bool(), ids, torch.ones_like(ids))  # RoBERTa pads with id 1
    _compare(model, ids, mask)


def test_training_forward_packs_with_equal_gradients():
    """Dropout off: the packed training forward gives the padded forward's loss and gradients."""
    grads = []
    for packing in (False, True):
        encoder = SentenceEncoder(tiny(dropout=0.0), pooler="mean").double().train()
        encoder.packing = packing
        shapes = []
        encoder.transformer.register_forward_pre_hook(
            lambda m, args, kwargs, shapes=shapes: shapes.append(kwargs["input_ids"].shape),
            with_kwargs=True,
        )
        ids, mask = _batch([7, 3, 9, 1, 4, 9], width=9)
        loss = encoder(ids, mask).pow(2).sum()
        # 33 tokens in rows of 18: 2 rows when packed, else the 6 padded sentences.
        assert shapes == [(2, 18) if packing else (6, 9)]
        loss.backward()
        grads.append([p.grad.clone() for p in encoder.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    scale = max(grad.abs().max().item() for grad in grads[0])
    for padded, packed in zip(*grads):
        assert_float64_close(packed, padded, scale)
