"""ESimCSE's momentum queue: keys are the momentum encoder's own embeddings of the anchors, the
queue is a FIFO of length K, the EMA is m*old + (1-m)*online, and the state round-trips."""

import copy

import pytest
import torch

from csetrain.augmentations.word_repetition import WordRepetition
from csetrain.config import CsetrainError
from csetrain.data.collate import Collator
from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.negatives.momentum_queue import MomentumQueue

BATCHES = [
    ["a man plays a guitar", "two dogs run in a field", "the market fell", "a child reads"],
    ["rain falls on the roof", "she sings a song", "the train is late", "birds fly south"],
]


def _encoder(pooler="cls", mlp_head="train_only"):
    return SentenceEncoder(tiny(), pooler=pooler, mlp_head=mlp_head)


def _batch(encoder, texts, step=0):
    tok = encoder.tokenizer
    collate = Collator(
        ("anchor",),
        WordRepetition(0.32),  # positives differ from anchors: keys must come from the anchors
        tok.pad_token_id,
        set(tok.all_special_ids),
        augmented_positive=True,
        seed=0,
    )
    return collate({"anchor_ids": tok(texts)["input_ids"]}, step)


@torch.no_grad()
def _reference_keys(miner, encoder, texts):
    """What SentenceEncoder itself computes with the momentum weights, dropout off, live head."""
    twin = copy.deepcopy(encoder)
    twin.transformer.load_state_dict(miner.momentum_encoder.backbone.state_dict())
    twin.head = encoder.head
    twin.eval()
    batch = twin.tokenize(texts)
    return twin(batch["input_ids"], batch["attention_mask"])


def _sgd_like_step(encoder, seed):
    """Move the online weights, as an optimizer step would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in encoder.transformer.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("pooler", ["cls", "mean", "first_last_avg"])
def test_queue_is_fifo_of_momentum_keys(pooler):
    encoder = _encoder(pooler)
    encoder.train()  # dropout on in the online encoder; the keys must not see it
    miner = MomentumQueue(size=6)
    miner.bind(encoder)
    assert miner.extra_negatives(torch.zeros(4, 32), {}) is None  # first step: no queue

    first = _reference_keys(miner, encoder, BATCHES[0])
    miner.after_optimizer_step(encoder, _batch(encoder, BATCHES[0]))
    assert int(miner.queue.filled) == 4
    assert torch.allclose(miner.extra_negatives(None, {}).embeddings, first, atol=1e-5)

    _sgd_like_step(encoder, 0)
    second = _reference_keys(miner, encoder, BATCHES[1])  # momentum weights before this EMA
    miner.after_optimizer_step(encoder, _batch(encoder, BATCHES[1], step=1))
    queue = miner.extra_negatives(None, {}).embeddings
    assert queue.shape == (6, 32) and int(miner.queue.filled) == 6
    assert torch.allclose(queue, torch.cat([first[2:], second]), atol=1e-5)  # oldest 2 fell off
    assert not queue.requires_grad
    encoder.eval()
    with torch.no_grad():
        tokens = encoder.tokenize(BATCHES[1])
        online_keys = encoder(tokens["input_ids"], tokens["attention_mask"])
    assert not torch.allclose(second, online_keys, atol=1e-4)  # momentum != online encoder


def test_after_step_hook_reproduces_esimcse_order():
    """ESimCSE per step t: EMA toward w_t, keys of batch t, then the optimizer makes w_{t+1}.
    Ours: optimizer makes w_{t+1}, then the hook: keys of batch t, EMA toward w_{t+1}."""
    encoder, m = _encoder(), 0.9
    official_momentum = copy.deepcopy(encoder)  # ESimCSE's bookkeeping, replayed by hand
    official_keys = []
    miner = MomentumQueue(size=12, momentum=m)
    miner.bind(encoder)  # before the first optimizer step: starts from w_0
    batches = [*BATCHES, BATCHES[0]]
    for step, texts in enumerate(batches):
        with torch.no_grad():  # ESimCSE: EMA inside the forward, before the loss
            pairs = zip(
                official_momentum.transformer.parameters(), encoder.transformer.parameters()
            )
            for tracked, online in pairs:
                tracked.mul_(m).add_(online, alpha=1 - m)
        official_momentum.head = encoder.head
        official_momentum.eval()
        tokens = official_momentum.tokenize(texts)
        with torch.no_grad():
            official_keys.append(official_momentum(tokens["input_ids"], tokens["attention_mask"]))
        _sgd_like_step(encoder, step)  # the optimizer step
        miner.after_optimizer_step(encoder, _batch(encoder, texts, step))
    queue = miner.extra_negatives(None, {}).embeddings
    assert torch.allclose(queue, torch.cat(official_keys), atol=1e-5)


def test_keys_skip_the_head_when_there_is_none():
    encoder = _encoder(mlp_head="none")
    miner = MomentumQueue(size=8)
    miner.bind(encoder)
    miner.after_optimizer_step(encoder, _batch(encoder, BATCHES[0]))
    assert torch.allclose(
        miner.extra_negatives(None, {}).embeddings,
        _reference_keys(miner, encoder, BATCHES[0]),
        atol=1e-5,
    )


def test_ema_by_hand_on_one_parameter():
    encoder = _encoder()
    miner = MomentumQueue(size=4, momentum=0.9)
    miner.bind(encoder)
    online = encoder.transformer.embeddings.word_embeddings.weight
    tracked = miner.momentum_encoder.backbone.embeddings.word_embeddings.weight
    assert torch.equal(online, tracked)  # starts as a copy of the online weights
    with torch.no_grad():
        online[5] += 1.0
    before_tracked, now_online = tracked[5].clone(), online[5].clone()
    miner.after_optimizer_step(encoder, _batch(encoder, BATCHES[0]))
    assert torch.allclose(tracked[5], 0.9 * before_tracked + 0.1 * now_online)
    assert torch.allclose(tracked[5], online[5] - 0.9)  # old row + 0.1 * 1.0 = online - 0.9
    assert not any(p.requires_grad for p in miner.momentum_encoder.parameters())


def test_state_dict_round_trips_into_a_fresh_miner():
    encoder = _encoder()
    miner = MomentumQueue(size=6)
    for step, texts in enumerate(BATCHES):
        miner.after_optimizer_step(encoder, _batch(encoder, texts, step))  # binds lazily
        _sgd_like_step(encoder, step)
    state = miner.state_dict()
    assert {"queue.keys", "queue.filled"} <= set(state)
    assert any(k.startswith("momentum_encoder.") for k in state)

    with pytest.raises(CsetrainError, match="bind"):
        MomentumQueue(size=6).load_state_dict(state)
    fresh_encoder = _encoder()
    fresh = MomentumQueue(size=6)
    fresh.bind(fresh_encoder)
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    batch = _batch(encoder, BATCHES[0])
    ids, mask = batch.split(batch.input_ids)["anchor"], batch.split(batch.attention_mask)["anchor"]
    fresh_encoder.head.load_state_dict(encoder.head.state_dict())
    assert torch.allclose(fresh.keys(fresh_encoder, ids, mask), miner.keys(encoder, ids, mask))


@pytest.mark.parametrize(
    "overrides",
    [
        ["objective=simcse_unsup"],
        ["objective=simcse_sup", "data=sample_nli"],
    ],
)
def test_queue_works_with_any_miner_objective(tmp_path, overrides):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(
        tmp_path,
        [
            *overrides,
            "negative_mining=momentum_queue",
            "negative_mining.size=12",
            "trainer.max_steps=3",
        ],
    )
    miner = c.objective.miner
    assert isinstance(miner, MomentumQueue) and int(miner.queue.filled) == 12
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
