"""2DMSE (`objective=2dmse`, class Matryoshka2D): the (layer, dim) draw varies and stays in range,
training views agree with the inference model's (layer, dim) prefixes, the loss is the documented
sum of terms, and it trains end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from csetrain.config import ConfigError
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer
from csetrain.objectives.matryoshka_2d import Matryoshka2D, geometric_dims

from .test_objectives import TEXTS, _unsup_batch
from .tolerances import FLOAT64_RTOL, assert_float32_of_float64_close, softmax_loss_atol


def test_draws_vary_across_steps_and_stay_in_range():
    objective = Matryoshka2D(seed=3)
    draws = [objective.sample(step, num_layers=6, hidden_size=384) for step in range(200)]
    layers, dims = {layer for layer, _ in draws}, {dim for _, dim in draws}
    assert layers == {1, 2, 3, 4, 5}  # uniform over 1..L-1: never the last layer
    assert dims == {8, 16, 32, 64, 128, 256} == set(geometric_dims(384))
    assert draws == [objective.sample(step, 6, 384) for step in range(200)]  # a function of step
    assert draws != [Matryoshka2D(seed=4).sample(step, 6, 384) for step in range(200)]
    custom = Matryoshka2D(dims=[4, 12])
    assert {custom.sample(s, 2, 32)[1] for s in range(50)} == {4, 12}
    with pytest.raises(ConfigError, match=r"objective.dims=\[8, 32\]"):
        Matryoshka2D(dims=[8, 32]).sample(0, 2, 32)


def test_training_views_are_the_inference_prefixes(tiny_encoder, tmp_path):
    batch = _unsup_batch(tiny_encoder)
    objective = Matryoshka2D(dims=[8])
    tiny_encoder.eval()
    layer, dim = objective.sample(0, tiny_encoder.num_layers, tiny_encoder.hidden_size)
    assert (layer, dim) == (1, 8)  # tiny has 2 layers: layer 1 is the only shallow one
    # What the loss trains at (layer 1, first 8 dims) is what a saved model serves at
    # model.layer=1 model.dim=8, and the full last layer is what it serves by default.
    save_sentence_transformer(tiny_encoder, tmp_path / "m")
    # Compared in float64 (the float32 weights cast exactly): encode() pads its batches to
    # another width than the training batch, so the two sums run in another order.
    views = objective.embed(tiny_encoder.double(), batch)
    small = load_sentence_encoder(tmp_path / "m", layer=1, dim=8).double()
    assert_float32_of_float64_close(small.encode(TEXTS), views["anchor_layer"][:, :8])
    full = load_sentence_encoder(tmp_path / "m").double()
    assert_float32_of_float64_close(full.encode(TEXTS), views["anchor"])
    assert not torch.allclose(views["anchor_layer"], views["anchor"], atol=1e-3)


def _cos(x, y):
    x, y = x.double(), y.double()
    return (x @ y.T) / (x.norm(dim=1)[:, None] * y.norm(dim=1)[None])


def _nce(x, y, temperature=0.05):
    """InfoNCE by hand: mean over rows of -log softmax(cos/temperature)[i, i]."""
    logits = _cos(x, y) / temperature
    return (logits.logsumexp(dim=1) - logits.diagonal()).mean().item()


def test_loss_is_the_hand_composed_sum():
    gen = torch.Generator().manual_seed(0)
    names = ("anchor", "positive", "anchor_layer", "positive_layer")
    # float64 views: the InfoNCE terms then run in float64; only the KL runs in float32
    # (similarity_kl upcasts with .float()), so its tolerance is float32's for logits <= 40.
    views = {k: torch.randn(4, 16, generator=gen, dtype=torch.float64) for k in names}
    a, p, a3, p3 = (views[k] for k in names)
    objective = Matryoshka2D(
        last_weight=0.7, layer_weight=1.3, dim_weight=0.5, kl_weight=2.0, kl_temperature=0.5
    )
    out = objective.terms(views, layer=3, dim=8)
    # KL(p_last || q_layer) of the row-wise in-batch similarity distributions at temperature 0.5
    p_last = F.softmax(_cos(a, p) / 0.05 / 0.5, dim=-1)
    q_layer = F.softmax(_cos(a3, p3) / 0.05 / 0.5, dim=-1)
    kl = (p_last * (p_last.log() - q_layer.log())).sum(-1).mean().item()
    expected = (
        0.7 * (_nce(a, p) + 0.5 * _nce(a[:, :8], p[:, :8]))
        + 1.3 / 3 * (_nce(a3, p3) + 0.5 * _nce(a3[:, :8], p3[:, :8]))
        + 2.0 * 0.5 * math.log(2 + 3) * kl
    )
    assert kl > 0.1  # a real contribution, not a rounding error
    kl_atol = softmax_loss_atol(terms=16, max_abs_logit=1 / 0.05 / 0.5, sides=1)
    assert out.metrics["kl"].item() == pytest.approx(kl, abs=kl_atol)
    loss_atol = 2.0 * 0.5 * math.log(2 + 3) * kl_atol + FLOAT64_RTOL * abs(expected)
    assert out.loss.item() == pytest.approx(expected, abs=loss_atol)


def test_forward_is_the_terms_of_the_step_draw_and_gradients_flow(tiny_encoder):
    batch = _unsup_batch(tiny_encoder)
    objective = Matryoshka2D(dims=[8])
    tiny_encoder.train()
    torch.manual_seed(0)
    out = objective(tiny_encoder, batch)
    torch.manual_seed(0)
    views = objective.embed(tiny_encoder, batch)  # same dropout masks
    expected = objective.terms(views, layer=1, dim=8).loss
    # forward is embed then terms: the same operations on the same tensors, so the same bits
    assert out.loss.item() == expected.item()
    out.loss.backward()
    grad = tiny_encoder.transformer.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0 and torch.isfinite(grad).all()


def test_step_counter_advances_with_the_optimizer(tiny_encoder):
    objective = Matryoshka2D()
    batch = _unsup_batch(tiny_encoder)
    for _ in range(3):
        objective.after_optimizer_step(tiny_encoder, batch)
    assert int(objective.step) == 3 and "step" in objective.state_dict()


def test_three_training_steps(tmp_path):
    from .test_train import _run_tiny

    tracker, components = _run_tiny(tmp_path, ["objective=2dmse", "trainer.max_steps=3"])
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert tracker.series("train/layer") == [1.0, 1.0, 1.0]
    assert set(tracker.series("train/dim")) <= {8.0, 16.0}
    assert int(components.objective.step) == 3
