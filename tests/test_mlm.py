"""regularizer=mlm: BERT's masking statistics (15%, 80/10/10, specials and padding never chosen),
the loss is finite and trains down on the tiny model, a checkpoint's pretrained head is loaded,
and it composes with any objective."""

import math

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from csetrain.modeling.backbones import from_pretrained, tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.objectives.simcse_unsup import SimCSEUnsup
from csetrain.regularizers.mlm import IGNORE, MLM, mask_tokens
from csetrain.regularizers.regularized import Regularized

from .test_objectives import _unsup_batch

CLS, SEP, PAD, MASK, VOCAB = 101, 102, 0, 103, 30522


def _rows(n=400, length=40):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, VOCAB, (n, length), generator=gen)
    lengths = torch.randint(5, length + 1, (n,), generator=gen)
    mask = (torch.arange(length) < lengths[:, None]).long()
    ids[mask == 0] = PAD
    ids[:, 0] = CLS
    ids[torch.arange(n), lengths - 1] = SEP
    return ids, mask


def test_masking_rate_and_80_10_10_split():
    ids, mask = _rows()
    special = torch.tensor([PAD, CLS, SEP, MASK])
    masked, labels = mask_tokens(
        ids, mask, special, MASK, VOCAB, 0.15, torch.Generator().manual_seed(0)
    )
    chosen = labels != IGNORE
    eligible = mask.bool() & (ids != CLS) & (ids != SEP)
    assert not (chosen & ~eligible).any()  # specials and padding are never chosen
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original tokens
    assert chosen.sum() / eligible.sum() == pytest.approx(0.15, abs=0.01)
    n = chosen.sum().item()
    to_mask = (masked[chosen] == MASK).sum().item() / n
    kept = (masked[chosen] == ids[chosen]).sum().item() / n
    replaced = 1 - to_mask - kept
    assert (to_mask, replaced, kept) == pytest.approx((0.8, 0.1, 0.1), abs=0.02)


def test_masking_is_seeded():
    ids, mask = _rows(n=20)
    special = torch.tensor([PAD, CLS, SEP])
    first = mask_tokens(ids, mask, special, MASK, VOCAB, 0.15, torch.Generator().manual_seed(4))
    again = mask_tokens(ids, mask, special, MASK, VOCAB, 0.15, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def _unweighted(mlm, encoder, batch):
    torch.manual_seed(0)  # the same masking every time
    return mlm(None, batch, encoder).metrics["unweighted_loss"].item()


def test_loss_is_finite_and_training_lowers_it(tiny_encoder):
    mlm = MLM(mlm_weight=0.1)
    mlm.bind(tiny_encoder)
    assert not mlm.loaded_pretrained  # a random config: fresh head
    batch = _unsup_batch(tiny_encoder)
    tiny_encoder.eval()  # no dropout: the measured loss is a function of the weights only
    before = _unweighted(mlm, tiny_encoder, batch)
    assert math.isfinite(before) and before > 0
    params = list(tiny_encoder.parameters()) + list(mlm.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(5):
        torch.manual_seed(0)
        out = mlm(None, batch, tiny_encoder)
        assert out.loss.item() == pytest.approx(0.1 * out.metrics["unweighted_loss"].item())
        out.loss.backward()
        assert mlm.transform.dense.weight.grad is not None and mlm.bias.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
    assert _unweighted(mlm, tiny_encoder, batch) < before


def test_pretrained_head_is_loaded_from_the_checkpoint(tmp_path):
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(tmp_path)
    tiny().tokenizer.save_pretrained(tmp_path)
    saved = BertForMaskedLM.from_pretrained(tmp_path).cls.predictions
    mlm = MLM()
    mlm.bind(SentenceEncoder(from_pretrained(str(tmp_path)), pooler="cls"))
    assert mlm.loaded_pretrained
    assert torch.equal(mlm.transform.dense.weight, saved.transform.dense.weight)
    assert torch.equal(mlm.transform.LayerNorm.bias, saved.transform.LayerNorm.bias)
    assert torch.equal(mlm.bias, saved.bias)
    fresh = MLM(pretrained_head=False)
    fresh.bind(SentenceEncoder(from_pretrained(str(tmp_path))))
    assert not fresh.loaded_pretrained


def test_adds_to_an_objective(tiny_encoder):
    mlm = MLM()
    mlm.bind(tiny_encoder)
    batch = _unsup_batch(tiny_encoder)
    out = Regularized(SimCSEUnsup(), {"mlm": mlm})(tiny_encoder, batch)
    assert out.metrics["mlm_loss"].item() > 0
    assert out.loss.item() == pytest.approx(
        out.metrics["objective_loss"].item() + out.metrics["mlm_loss"].item(), rel=1e-5
    )


@pytest.mark.parametrize("objective", ["simcse_unsup", "symmetric_infonce"])
def test_composes_with_any_objective_in_training(tmp_path, objective):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(
        tmp_path, [f"objective={objective}", "regularizer=[mlm]", "trainer.max_steps=3"]
    )
    mlm = c.objective.regularizers["mlm"]
    optimized = {id(p) for g in c.optimizer.param_groups for p in g["params"]}
    assert {id(mlm.bias), id(mlm.transform.dense.weight)} <= optimized
    losses = tracker.series("train/mlm/unweighted_loss")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
