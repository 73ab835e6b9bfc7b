"""GradCache: gradients equal full-batch gradients (dropout off) and the one-graph chunked
reference with the same dropout masks (dropout on, RNG replayed)."""

import pytest
import torch

from csetrain.config import TrainerConfig
from csetrain.grad_cache import grad_cache_step
from csetrain.objectives.simcse_unsup import SimCSEUnsup
from csetrain.runtime import Runtime

from .test_objectives import _unsup_batch


def _grads(encoder):
    return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}


def _zero(encoder):
    for p in encoder.parameters():
        p.grad = None


def test_grad_cache_equals_full_batch_without_dropout(tiny_encoder):
    objective, runtime = SimCSEUnsup(temperature=0.05), Runtime(TrainerConfig(device="cpu"))
    batch = _unsup_batch(tiny_encoder)
    tiny_encoder.eval()
    full = objective(tiny_encoder, batch)
    full.loss.backward()
    expected = _grads(tiny_encoder)
    _zero(tiny_encoder)
    cached = grad_cache_step(objective, tiny_encoder, batch, chunk_size=3, runtime=runtime)
    got = _grads(tiny_encoder)
    assert cached.loss.item() == pytest.approx(full.loss.item(), abs=1e-5)
    assert expected.keys() == got.keys() and len(got) > 5
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-5, rtol=1e-4), name


def test_grad_cache_replays_dropout(tiny_encoder):
    objective, runtime = SimCSEUnsup(temperature=0.05), Runtime(TrainerConfig(device="cpu"))
    batch = _unsup_batch(tiny_encoder)
    tiny_encoder.train()
    # reference: the same chunks in one autograd graph, starting from the same RNG state
    torch.manual_seed(123)
    parts = []
    for start in range(0, batch.input_ids.shape[0], 3):
        mask = batch.attention_mask[start : start + 3]
        width = int(mask.sum(1).max())
        parts.append(tiny_encoder(batch.input_ids[start : start + 3, :width], mask[:, :width]))
    reference = objective.loss(batch.split(torch.cat(parts)), batch)
    reference.loss.backward()
    expected = _grads(tiny_encoder)
    _zero(tiny_encoder)
    torch.manual_seed(123)
    cached = grad_cache_step(objective, tiny_encoder, batch, chunk_size=3, runtime=runtime)
    assert cached.loss.item() == pytest.approx(reference.loss.item(), abs=1e-5)
    for name, grad in _grads(tiny_encoder).items():
        assert torch.allclose(expected[name], grad, atol=1e-5, rtol=1e-4), name
    # the masks matter here: another RNG state gives another loss
    _zero(tiny_encoder)
    torch.manual_seed(124)
    shifted = grad_cache_step(objective, tiny_encoder, batch, chunk_size=3, runtime=runtime)
    assert shifted.loss.item() != pytest.approx(reference.loss.item(), abs=1e-6)


def test_training_with_grad_cache_runs_end_to_end(tmp_path):
    from .test_train import _run_tiny

    tracker, _ = _run_tiny(tmp_path, ["trainer.grad_cache.chunk_size=5"])
    assert len(tracker.series("train/loss")) == 5
