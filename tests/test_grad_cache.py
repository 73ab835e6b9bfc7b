"""GradCache as a wrapper the objective runs through: loss and gradients equal the full batch
(dropout off) and the one-graph chunked reference with the same dropout masks (dropout on, RNG
replayed), for objectives whose `embed` does more than one plain forward (2DMSE's every-layer
views, Mirror-BERT's drophead), with regularizers on the cached views, and refused with one line
where embedding couples the rows (WhitenedCSE).

Everything runs in float64: both sides sum the same terms in different orders (chunks vs one
batch), which in float32 moves gradients by ~1e-6 relative depending on the CPU; in float64 the
reordering moves them by ~n * 1.1e-16 (n: terms per sum, a few thousand), so 1e-9 of the largest
gradient is loose against rounding on any machine and far below any real error.
"""

import pytest
import torch

from csetrain.config import ConfigError, TrainerConfig
from csetrain.grad_cache import GradCache
from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.objectives.matryoshka_2d import Matryoshka2D
from csetrain.objectives.mirror_bert import MirrorBERT
from csetrain.objectives.simcse_unsup import SimCSEUnsup
from csetrain.objectives.whitenedcse import WhitenedCSE
from csetrain.regularizers.align_uniform import AlignUniform
from csetrain.regularizers.regularized import Regularized
from csetrain.runtime import Runtime

from .test_objectives import _unsup_batch

RTOL = 1e-9  # see the module docstring
CHUNK = 2  # examples per chunk: 6 examples -> 3 chunks


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return SentenceEncoder(tiny(), pooler="cls", mlp_head="train_only").double()


@pytest.fixture
def runtime():
    return Runtime(TrainerConfig(device="cpu"))


def _loss_and_grads(objective, encoder, batch, seed: int = 123):
    for p in encoder.parameters():
        p.grad = None
    torch.manual_seed(seed)
    out = objective(encoder, batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    return out.loss.item(), grads


def _assert_same(expected, got):
    (loss_a, grads_a), (loss_b, grads_b) = expected, got
    assert loss_b == pytest.approx(loss_a, rel=RTOL)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 5
    scale = max(g.abs().max().item() for g in grads_a.values())
    assert scale > 0
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=RTOL * scale, rtol=RTOL, msg=name)


class ChunkedInOneGraph(torch.nn.Module):
    """The reference: the same chunks through the objective's own `embed`, in one graph."""

    def __init__(self, objective):
        super().__init__()
        self.objective = objective

    def forward(self, encoder, batch):
        def embed(encoder, batch):
            parts = [
                self.objective.embed(encoder, batch.examples(s, min(s + CHUNK, batch.size)))
                for s in range(0, batch.size, CHUNK)
            ]
            return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

        return self.objective(encoder, batch, embed=embed)


def test_equals_full_batch_without_dropout(encoder, runtime):
    objective, batch = SimCSEUnsup(temperature=0.05), _unsup_batch(encoder)
    encoder.eval()
    full = _loss_and_grads(objective, encoder, batch)
    _assert_same(full, _loss_and_grads(GradCache(objective, CHUNK, runtime), encoder, batch))


@pytest.mark.parametrize(
    "make", [SimCSEUnsup, lambda: MirrorBERT(drophead=0.3), lambda: Matryoshka2D(dims=[8, 16])]
)
def test_replays_dropout_through_the_objectives_embed(encoder, runtime, make):
    objective, batch = make(), _unsup_batch(encoder)
    encoder.train()
    reference = _loss_and_grads(ChunkedInOneGraph(objective), encoder, batch)
    _assert_same(reference, _loss_and_grads(GradCache(objective, CHUNK, runtime), encoder, batch))
    # the masks matter: another RNG state gives another loss
    shifted, _ = _loss_and_grads(GradCache(objective, CHUNK, runtime), encoder, batch, seed=124)
    assert shifted != pytest.approx(reference[0], rel=1e-6)


def test_the_replay_leaves_the_rng_where_the_forward_left_it(encoder, runtime):
    """The backward replays the masks under a forked generator, so it draws nothing: the next
    step's dropout does not depend on whether GradCache replayed."""
    batch = _unsup_batch(encoder)
    encoder.train()
    out = GradCache(SimCSEUnsup(), CHUNK, runtime)(encoder, batch)
    after_forward = torch.get_rng_state()
    out.loss.backward()
    assert torch.equal(torch.get_rng_state(), after_forward)


def test_regularizers_see_the_cached_views(encoder, runtime):
    batch, terms = _unsup_batch(encoder), {"align_uniform": AlignUniform(0.5, 0.25)}
    encoder.eval()
    full = _loss_and_grads(Regularized(SimCSEUnsup(), terms), encoder, batch)
    cached = Regularized(GradCache(SimCSEUnsup(), CHUNK, runtime), terms)
    _assert_same(full, _loss_and_grads(cached, encoder, batch))


def test_row_coupled_embedding_is_refused(runtime):
    with pytest.raises(ConfigError, match="grad_cache.chunk_size=0"):
        GradCache(WhitenedCSE(), CHUNK, runtime)


def test_training_with_grad_cache_runs_end_to_end(tmp_path):
    from .test_train import _run_tiny

    tracker, components = _run_tiny(tmp_path, ["trainer.grad_cache.chunk_size=5"])
    assert isinstance(components.objective, GradCache)
    assert len(tracker.series("train/loss")) == 5


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "dropout": 0.1}])
def test_gradient_checkpointing_composes_with_the_rng_replay(runtime, lora):
    """A tiny decoder with attention (and LoRA) dropout: GradCache's gradients are identical
    with and without gradient checkpointing, whose recompute restores the RNG as the replay
    does. Both sides run the same kernels on the same chunks, so the equality is exact."""
    from csetrain.modeling.decoders import tiny_decoder

    def make():
        torch.manual_seed(0)  # LoRA's A matrices are drawn from the global generator
        encoder = SentenceEncoder(tiny_decoder(dropout=0.1), pooler="last_token", lora=lora)
        return encoder.double().train()

    plain, checkpointed = make(), make()
    checkpointed.checkpoint_activations()
    assert checkpointed.transformer.is_gradient_checkpointing
    batch = _unsup_batch(plain)
    objective = GradCache(SimCSEUnsup(), CHUNK, runtime)
    loss_a, grads_a = _loss_and_grads(objective, plain, batch)
    loss_b, grads_b = _loss_and_grads(objective, checkpointed, batch)
    assert loss_a == loss_b and grads_a.keys() == grads_b.keys() and len(grads_a) > 5
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    # dropout is live: another RNG state moves the loss
    shifted, _ = _loss_and_grads(objective, checkpointed, batch, seed=124)
    assert shifted != pytest.approx(loss_a, rel=1e-6)
