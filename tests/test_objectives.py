"""Objectives on the tiny model: the loss equals the loss math applied to the encoder's own
embeddings, gradients reach the encoder, and the supervised layout is SimCSE's."""

import math

import pytest
import torch

from csetrain.augmentations.dropout import Dropout
from csetrain.data.collate import Collator
from csetrain.losses import hard_negative_offset, info_nce
from csetrain.negatives.hard_from_data import HardFromData
from csetrain.objectives.simcse_sup import SimCSESup
from csetrain.objectives.simcse_unsup import SimCSEUnsup

from .tolerances import softmax_loss_atol

TEXTS = [
    "a man plays a guitar",
    "two dogs run in a field",
    "the stock market fell today",
    "a child reads a book",
]


def _ids(encoder, texts):
    return encoder.tokenizer(texts)["input_ids"]


def _unsup_batch(encoder):
    collate = Collator(
        ("anchor",),
        Dropout(),
        encoder.tokenizer.pad_token_id,
        set(),
        augmented_positive=True,
        seed=0,
    )
    return collate({"anchor_ids": _ids(encoder, TEXTS)}, step=0)


def test_unsup_loss_equals_info_nce_on_the_views(tiny_encoder):
    objective = SimCSEUnsup(temperature=0.05)
    batch = _unsup_batch(tiny_encoder)
    # No dropout: both views identical, so the loss is checkable by hand. In float64: encode()
    # pads to another width than the batch; only its float32 result is rounded.
    tiny_encoder.double().eval()
    out = objective(tiny_encoder, batch)
    z = tiny_encoder.encode(TEXTS).double()
    expected, _ = info_nce(z, z, torch.arange(4), 0.05)
    atol = softmax_loss_atol(terms=0, max_abs_logit=1 / 0.05, sides=1)
    assert out.loss.item() == pytest.approx(expected.item(), abs=atol)


def test_unsup_dropout_makes_views_differ_and_gradients_flow(tiny_encoder):
    objective = SimCSEUnsup(temperature=0.05)
    batch = _unsup_batch(tiny_encoder)
    tiny_encoder.train()
    torch.manual_seed(0)
    views = objective.embed(tiny_encoder, batch)
    assert not torch.allclose(views["anchor"], views["positive"])  # different dropout masks
    out = objective(tiny_encoder, batch)
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    grads = [p.grad for p in tiny_encoder.transformer.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert tiny_encoder.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_sup_layout_and_hard_negative_weight(tiny_encoder):
    miner = HardFromData()
    objective = SimCSESup(miner=miner, temperature=0.05, hard_negative_weight=math.log(3.0))
    assert objective.required_data_fields == ("anchor", "positive", "hard_negative")
    collate = Collator(
        ("anchor", "positive", "hard_negative"),
        Dropout(),
        0,
        set(),
        augmented_positive=False,
        seed=0,
    )
    rows = {
        "anchor_ids": _ids(tiny_encoder, TEXTS),
        "positive_ids": _ids(tiny_encoder, TEXTS[::-1]),
        "hard_negative_ids": _ids(tiny_encoder, [t + " not" for t in TEXTS]),
    }
    batch = collate(rows, step=0)
    tiny_encoder.double().eval()  # float64, as in the unsupervised test above
    out = objective(tiny_encoder, batch)
    a, p, n = (
        tiny_encoder.encode(TEXTS).double(),
        tiny_encoder.encode(TEXTS[::-1]).double(),
        tiny_encoder.encode([t + " not" for t in TEXTS]).double(),
    )
    offset = hard_negative_offset(4, 8, 4, math.log(3.0))
    expected, logits = info_nce(a, torch.cat([p, n]), torch.arange(4), 0.05, offset)
    assert logits.shape == (4, 8)
    atol = softmax_loss_atol(terms=0, max_abs_logit=1 / 0.05 + math.log(3.0), sides=1)
    assert out.loss.item() == pytest.approx(expected.item(), abs=atol)
    unweighted, _ = info_nce(a, torch.cat([p, n]), torch.arange(4), 0.05)
    assert expected.item() > unweighted.item()  # a positive weight makes hard negatives harder
