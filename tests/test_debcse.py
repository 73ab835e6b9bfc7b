"""objective=debcse: surface similarity by hand; the IPW sampling distributions sum to 1, are
bounded by the clip and point in the debiasing direction; false negatives are never sampled;
seeded determinism; the loss is cross-entropy over the sampled pairs; the frozen encoder stays
out of the optimizer and the state dict; training end to end with a tiny frozen encoder."""

import math

import pytest
import torch
import torch.nn.functional as F

from csetrain.app.components import build_objective
from csetrain.augmentations.dropout import Dropout
from csetrain.config import ConfigError
from csetrain.data.collate import Collator
from csetrain.losses import cosine_matrix
from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.objectives.debcse import DebCSE, ipw_distribution, surface_similarity

from .test_config import _compose
from .tolerances import softmax_loss_atol

SENTENCES = [
    "a man plays a guitar",
    "a man plays a guitar on stage tonight",
    "two dogs run in a field",
    "the dogs run",
    "the stock market fell sharply today after the announcement",
    "a child reads a book",
    "a child reads a long book in the quiet library",
    "it rained",
]
# A random tiny encoder puts every pair at cosine ~0.86-0.97: thresholds in that range give it
# semantic neighbours, false negatives and plain negatives alike.
TINY_SEMANTIC = [
    "objective.semantic_encoder.backbone._target_=csetrain.modeling.backbones.tiny",
    "objective.positive_threshold=0.99",
    "objective.false_negative_threshold=0.95",
]


def _batch(encoder, texts=SENTENCES):
    ids = encoder.tokenizer(texts)["input_ids"]
    special = set(encoder.tokenizer.all_special_ids)
    collate = Collator(("anchor",), Dropout(), 0, special, augmented_positive=True, seed=0)
    return collate({"anchor_ids": ids}, step=0)


def _debcse(**kwargs):
    return DebCSE(semantic_encoder=SentenceEncoder(tiny(init_seed=1), pooler="mean"), **kwargs)


def test_surface_similarity_by_hand():
    cls, sep, pad = 101, 102, 0
    ids = torch.tensor(
        [[cls, 5, 6, 7, sep, pad], [cls, 5, 6, sep, pad, pad], [cls, 9, sep, 0, 0, 0]]
    )
    mask = (ids != pad).long()
    s = surface_similarity(ids, mask, torch.tensor([cls, sep, pad]), length_weight=0.5)
    # rows 0/1: lengths 3 vs 2 -> 2/3; sets {5,6,7} vs {5,6} -> Jaccard 2/3
    assert s[0, 1].item() == pytest.approx(2 / 3) and s[1, 0].item() == pytest.approx(2 / 3)
    assert s[0, 2].item() == pytest.approx(0.5 * 1 / 3 + 0.5 * 0)  # no shared token
    assert torch.allclose(s.diagonal(), torch.ones(3))
    lengths_only = surface_similarity(ids, mask, torch.tensor([cls, sep, pad]), length_weight=1.0)
    assert lengths_only[1, 2].item() == pytest.approx(1 / 2)


def test_distribution_sums_to_one_and_clipping_bounds_the_weights():
    propensity = torch.tensor([[0.001, 0.5, 1.0, 0.2], [0.3, 0.3, 0.9, 0.05]])
    candidates = torch.tensor([[True, True, True, False], [True, False, True, True]])
    p = ipw_distribution(propensity, candidates, min_propensity=0.1)
    assert torch.allclose(p.sum(1), torch.ones(2))
    assert p[0].tolist() == pytest.approx([10 / 13, 2 / 13, 1 / 13, 0.0])  # 1/0.001 clipped to 10
    for row, cand in zip(p, candidates):
        assert row[cand].max() / row[cand].min() <= 10 + 1e-5  # at most 1 / min_propensity apart
    unclipped = ipw_distribution(propensity, candidates, min_propensity=1e-6)
    assert unclipped[0, 0] / unclipped[0, 2] == pytest.approx(1000, rel=1e-4)
    assert ipw_distribution(propensity, torch.zeros_like(candidates), 0.1).sum() == 0


def _is_monotone(prob, surface, increasing):
    for i in range(len(prob)):
        for j in range(len(prob)):
            for k in range(len(prob)):
                if prob[i, j] > 0 and prob[i, k] > 0 and surface[i, j] > surface[i, k] + 1e-6:
                    assert (prob[i, j] >= prob[i, k]) if increasing else (prob[i, j] <= prob[i, k])


def test_surface_similar_positives_are_sampled_less(tiny_encoder):
    # every sentence is a positive candidate here, so the ordering is visible in every row
    objective = _debcse(positive_threshold=-1.0, false_negative_threshold=-1.0)
    dist = objective.distributions(_batch(tiny_encoder))
    positive, surface = dist["positive"], dist["surface"]
    assert torch.allclose(positive.sum(1), torch.ones(8))
    _is_monotone(positive, surface, increasing=False)
    # the dropout twin (surface 1) is the least likely positive of each row
    assert (positive.diagonal() <= positive.min(1).values + 1e-7).all()
    # "a man plays a guitar" (0) vs its longer paraphrase (1) and vs an unrelated sentence (7)
    assert surface[0, 1] > surface[0, 7] and positive[0, 1] < positive[0, 7]


def test_surface_similar_negatives_are_sampled_more(tiny_encoder):
    objective = _debcse(positive_threshold=1.01, false_negative_threshold=1.01)
    dist = objective.distributions(_batch(tiny_encoder))
    negative = dist["negative"]
    assert torch.allclose(negative.sum(1), torch.ones(8)) and (negative.diagonal() == 0).all()
    _is_monotone(negative, dist["surface"], increasing=True)


def test_false_negatives_are_never_sampled(tiny_encoder):
    objective = _debcse(positive_threshold=0.99, false_negative_threshold=0.93)
    batch = _batch(tiny_encoder)
    dist = objective.distributions(batch)
    close = (dist["semantic"] >= 0.93) & ~torch.eye(8, dtype=torch.bool)
    assert close.any() and not close.all()
    full = close.all(1)
    assert (dist["negative"][close & ~full[:, None]] == 0).all()
    for _ in range(20):
        _, negatives, _ = objective.sample(batch)
        assert not (negatives & close & ~full[:, None]).any()


def test_sampling_is_seeded(tiny_encoder):
    batch = _batch(tiny_encoder)
    settings = {"positive_threshold": 0.99, "false_negative_threshold": 0.99}
    first = _debcse(seed=3, **settings).sample(batch)
    again = _debcse(seed=3, **settings).sample(batch)
    other = _debcse(seed=4, **settings).sample(batch)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    assert (first[1].sum(1) == round(0.5 * 7)).all()  # the configured count per anchor


def test_loss_is_cross_entropy_over_the_sampled_pairs(tiny_encoder):
    objective = _debcse(positive_threshold=0.955, false_negative_threshold=0.93, seed=1)
    batch = _batch(tiny_encoder)
    tiny_encoder.double().eval()  # float64: encode() pads to another width than the batch
    out = objective(tiny_encoder, batch)
    objective.draws.zero_()  # replay the same draw
    positives, negatives, _ = objective.sample(batch)
    z = tiny_encoder.encode(SENTENCES).double()
    logits = cosine_matrix(z, z) / 0.05
    expected = 0.0
    for i in range(8):
        allowed = negatives[i].clone()
        allowed[positives[i]] = True
        expected += F.cross_entropy(logits[i][allowed][None], allowed[: positives[i]].sum()[None])
    # The objective's cross-entropy runs in float32 over at most 8 candidates; here only the
    # float32 result of encode() is rounded.
    atol = softmax_loss_atol(8, 1 / 0.05, sides=1) + softmax_loss_atol(0, 1 / 0.05, sides=1)
    assert out.loss.item() == pytest.approx(expected.item() / 8, abs=atol)
    tiny_encoder.train()
    assert negatives.any() and (positives != torch.arange(8)).any()  # both kinds are exercised
    objective(tiny_encoder, batch).loss.backward()
    assert tiny_encoder.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_semantic_encoder_is_frozen_and_outside_optimizer_and_state_dict(tmp_path):
    from .test_train import _run_tiny

    objective = build_objective(_compose(["objective=debcse", *TINY_SEMANTIC]))
    frozen = objective.semantic.encoder
    assert not {id(p) for p in frozen.parameters()} & {id(p) for p in objective.parameters()}
    assert set(objective.state_dict()) == {"draws"}
    tracker, c = _run_tiny(tmp_path, ["objective=debcse", "trainer.max_steps=3", *TINY_SEMANTIC])
    frozen = c.objective.semantic.encoder
    optimized = {id(p) for g in c.optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in frozen.parameters()}
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert not frozen.training and int(c.objective.draws) == 3
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert len(tracker.series("train/false_negatives")) == 3
    assert min(tracker.series("train/negatives")) > 0


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="objective.false_negative_threshold"):
        _debcse(positive_threshold=0.5, false_negative_threshold=0.6)
    with pytest.raises(ConfigError, match="objective.min_propensity"):
        _debcse(min_propensity=0.0)
    with pytest.raises(ConfigError, match="objective.semantic_encoder"):
        DebCSE()
