"""ESimCSE: its YAML picks word repetition + the momentum queue (the command line wins), the loss
is InfoNCE over [positives | queue], gradients reach the encoder, and it trains end to end."""

import math

import pytest
import torch

from csetrain.app.settings import instantiate
from csetrain.augmentations.word_repetition import WordRepetition
from csetrain.losses import info_nce
from csetrain.negatives.momentum_queue import MomentumQueue
from csetrain.objectives.esimcse import ESimCSE

from .test_config import _compose
from .test_momentum_queue import BATCHES, _batch, _encoder


def test_yaml_selects_its_companions_and_the_command_line_wins():
    cfg = _compose(["objective=esimcse"])
    assert isinstance(instantiate(cfg.augmentation), WordRepetition)
    assert isinstance(instantiate(cfg.negative_mining), MomentumQueue)
    assert cfg.objective.temperature == 0.05
    assert (
        _compose(["objective=esimcse", "negative_mining=in_batch"])
        .negative_mining["_target_"]
        .endswith("InBatch")
    )


def test_loss_is_info_nce_over_positives_and_queue():
    encoder = _encoder()
    miner = MomentumQueue(size=6)
    objective = ESimCSE(miner=miner, temperature=0.05)
    encoder.eval()  # deterministic views, so the loss is checkable
    first = _batch(encoder, BATCHES[0])
    empty = objective(encoder, first)
    views = objective.embed(encoder, first)
    plain, _ = info_nce(views["anchor"], views["positive"], torch.arange(4), 0.05)
    assert empty.loss.item() == pytest.approx(plain.item(), abs=1e-5)  # first step: no queue

    miner.after_optimizer_step(encoder, first)
    second = _batch(encoder, BATCHES[1], step=1)
    out = objective(encoder, second)
    views = objective.embed(encoder, second)
    queue = miner.extra_negatives(None, {}).embeddings
    expected, logits = info_nce(
        views["anchor"], torch.cat([views["positive"], queue]), torch.arange(4), 0.05
    )
    assert logits.shape == (4, 8)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    without_queue, _ = info_nce(views["anchor"], views["positive"], torch.arange(4), 0.05)
    assert expected.item() > without_queue.item()  # the queue adds negatives


def test_finite_loss_and_gradients_reach_the_encoder():
    encoder = _encoder()
    objective = ESimCSE(miner=MomentumQueue(size=8))
    encoder.train()
    objective.miner.after_optimizer_step(encoder, _batch(encoder, BATCHES[0]))
    out = objective(encoder, _batch(encoder, BATCHES[1], step=1))
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    assert encoder.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert encoder.head[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in objective.miner.momentum_encoder.parameters())


def test_three_steps_end_to_end(tmp_path):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(tmp_path, ["objective=esimcse", "trainer.max_steps=3"])
    assert isinstance(c.objective, ESimCSE) and isinstance(c.collator.augmentation, WordRepetition)
    miner = c.objective.miner
    assert int(miner.queue.filled) == 3 * 8  # batch 8, queue 160: every anchor so far
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    momentum = miner.momentum_encoder.backbone.embeddings.word_embeddings.weight
    online = c.encoder.transformer.embeddings.word_embeddings.weight
    assert not torch.equal(momentum, online)  # lags behind the online weights
    assert torch.allclose(momentum, online, atol=1e-2)


def test_experiment_carries_the_official_recipe():
    cfg = _compose(["experiment=esimcse_bert_base"])
    assert (cfg.trainer.batch_size, cfg.trainer.lr, cfg.trainer.eval_every) == (64, 3e-5, 125)
    assert (cfg.negative_mining.size, cfg.negative_mining.momentum) == (160, 0.995)
    assert (cfg.augmentation.dup_rate, cfg.objective.temperature, cfg.data.max_length) == (
        0.32,
        0.05,
        32,
    )
    assert (cfg.model.pooler, cfg.model.mlp_head) == ("cls", "train_only")
    assert cfg.objective._target_.endswith("ESimCSE")
