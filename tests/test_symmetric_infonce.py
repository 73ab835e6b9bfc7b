"""objective=symmetric_infonce: both cross-entropies by hand, the learnable temperature is a
trained parameter (gradient, optimizer, clamp), and training end to end."""

import math

import pytest
import torch

from csetrain.config import ConfigError
from csetrain.objectives.symmetric_infonce import SymmetricInfoNCE, symmetric_info_nce

from .test_objectives import TEXTS, _unsup_batch
from .tolerances import softmax_loss_atol


def _ce(logits, target):
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_symmetric_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[3.0, 4.0], [0.0, -1.0]])  # unit: (0.6, 0.8), (0, -1)
    cos = [[0.6, 0.0], [0.8, -1.0]]  # cos[i][j] = cos(a_i, p_j)
    scale = 10.0
    a2p = sum(_ce([c * scale for c in cos[i]], i) for i in range(2)) / 2
    p2a = sum(_ce([cos[i][j] * scale for i in range(2)], j) for j in range(2)) / 2
    loss, logits = symmetric_info_nce(a, p, torch.tensor(scale))
    assert logits.shape == (2, 2)
    # float32 cosines of 2 dimensions, softmax over 2 candidates, logits up to 10
    atol = softmax_loss_atol(terms=2, max_abs_logit=scale, sides=1)
    assert loss.item() == pytest.approx((a2p + p2a) / 2, abs=atol)
    one_way = sum(_ce([c * scale for c in cos[i]], i) for i in range(2)) / 2
    assert loss.item() != pytest.approx(one_way)  # the reverse direction counts


def test_extra_negatives_only_join_the_anchor_direction():
    a, p = torch.eye(2), torch.tensor([[1.0, 0.1], [0.2, 1.0]])
    extra = torch.tensor([[1.0, 0.0]])  # identical to anchor 0: a hard negative for it
    with_extra, logits = symmetric_info_nce(a, p, torch.tensor(5.0), extra)
    plain, _ = symmetric_info_nce(a, p, torch.tensor(5.0))
    assert logits.shape == (2, 3) and with_extra.item() > plain.item()


def test_objective_matches_the_math_and_gradients_reach_the_encoder(tiny_encoder):
    objective = SymmetricInfoNCE(temperature=0.05)
    batch = _unsup_batch(tiny_encoder)
    # In float64 (encode() pads to another width than the batch); the cross-entropies run in
    # float32 on both sides (symmetric_info_nce upcasts with .float()), over 4 candidates.
    tiny_encoder.double().eval()
    out = objective(tiny_encoder, batch)
    z = tiny_encoder.encode(TEXTS).double()
    expected, _ = symmetric_info_nce(z, z, torch.tensor(20.0))
    atol = softmax_loss_atol(terms=4, max_abs_logit=20.0)
    assert out.loss.item() == pytest.approx(expected.item(), abs=atol)
    tiny_encoder.train()
    objective(tiny_encoder, batch).loss.backward()
    assert tiny_encoder.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_learnable_temperature_gets_a_gradient_and_is_clamped(tiny_encoder):
    objective = SymmetricInfoNCE(temperature=0.05, learnable_temperature=True, min_temperature=0.02)
    assert [name for name, _ in objective.named_parameters()] == ["log_scale"]
    tiny_encoder.train()
    batch = _unsup_batch(tiny_encoder)
    objective(tiny_encoder, batch).loss.backward()
    assert objective.log_scale.grad is not None and objective.log_scale.grad.abs() > 0
    with torch.no_grad():
        objective.log_scale.fill_(math.log(1000.0))  # temperature 0.001, below the minimum
    objective.after_optimizer_step(tiny_encoder, batch)
    assert objective.temperature == pytest.approx(0.02)
    fixed = SymmetricInfoNCE(temperature=0.05)
    assert list(fixed.parameters()) == [] and fixed.temperature == pytest.approx(0.05)


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="objective.positive_from"):
        SymmetricInfoNCE(positive_from="nli")
    with pytest.raises(ConfigError, match="objective.temperature"):
        SymmetricInfoNCE(temperature=0.001)


def test_three_training_steps_train_the_temperature(tmp_path):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(
        tmp_path,
        [
            "objective=symmetric_infonce",
            "objective.learnable_temperature=true",
            "trainer.max_steps=3",
            "trainer.lr=1e-2",
        ],
    )
    assert any(p is c.objective.log_scale for g in c.optimizer.param_groups for p in g["params"])
    temperatures = tracker.series("train/temperature")
    assert len(temperatures) == 3 and temperatures[-1] != pytest.approx(0.05, abs=1e-4)
    assert all(math.isfinite(x) for x in tracker.series("train/loss"))


def test_pairs_from_the_corpus(tmp_path):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(
        tmp_path,
        [
            "objective=symmetric_infonce",
            "objective.positive_from=data",
            "data=sample_nli",
            "trainer.max_steps=2",
        ],
    )
    assert c.collator.fields == ("anchor", "positive") and not c.collator.augmented_positive
    assert len(tracker.series("train/loss")) == 2
