"""Latent-attention pooling (NV-Embed): shapes, padding never counts, the attention by hand,
save -> reload (csetrain and sentence-transformers), and 3 training steps."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from csetrain.config import ConfigError
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer
from csetrain.modeling.latent_attention import LatentAttention

from .tolerances import assert_float64_close

SENTENCES = ["a cat sits on the mat .", "the quick brown fox jumps over the lazy dog", "hello"]
TINY_SIZES = {"num_latents": 8, "heads": 2, "dim_head": 8, "mlp_mult": 2}


def _encoder(backbone, **sizes):
    return SentenceEncoder(
        backbone, pooler="latent_attention", latent_attention=sizes or TINY_SIZES
    )


def _shuffle_weights(module, seed=0):
    """Move every weight off its init (LayerNorms start at 1/0, which would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def test_shapes_and_the_layer_belongs_to_the_model(tiny_backbone):
    encoder = _encoder(tiny_backbone)
    layer = encoder.pooling_layer
    assert layer.latents.shape == (8, 32)
    assert layer.to_q.weight.shape == (2 * 8, 32) and layer.to_kv.weight.shape == (2 * 2 * 8, 32)
    batch = encoder.tokenize(SENTENCES)
    assert encoder(batch["input_ids"], batch["attention_mask"]).shape == (3, 32)
    assert [
        z.shape
        for z in encoder.embed_layers(batch["input_ids"], batch["attention_mask"], head=False)
    ] == [
        (3, 32),
        (3, 32),
    ]
    # part of the model: its parameters are the encoder's (so the optimizer and checkpoints see them)
    assert any(name.startswith("pooling_layer.latents") for name, _ in encoder.named_parameters())
    assert "pooling_layer.latents" in encoder.state_dict()


def test_paper_sizes_are_the_default(tiny_backbone):
    layer = SentenceEncoder(tiny_backbone, pooler="latent_attention").pooling_layer
    assert (layer.num_latents, layer.heads, layer.dim_head, layer.mlp_mult) == (512, 8, 32, 4)


def test_padding_never_changes_the_output(tiny_backbone):
    """In float64: each padded width runs the sums in another order."""
    encoder = _encoder(tiny_backbone)
    _shuffle_weights(encoder.pooling_layer)
    encoder = copy.deepcopy(encoder).double().eval()  # the shared backbone stays float32
    ids = encoder.tokenizer(["a cat sits on the mat ."], return_tensors="pt")["input_ids"]
    pad = encoder.tokenizer.pad_token_id
    reference = encoder(ids, torch.ones_like(ids))
    for extra in (1, 5, 17):  # append padding tokens, masked out
        padded = torch.cat([ids, torch.full((1, extra), pad)], dim=1)
        mask = torch.cat([torch.ones_like(ids), torch.zeros(1, extra, dtype=torch.long)], dim=1)
        assert_float64_close(encoder(padded, mask), reference)
    # at the layer itself: whatever sits in masked positions is never read
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(2, 6, 32, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    noisy = states.clone()
    noisy[mask == 0] = 100 * torch.randn(
        int((mask == 0).sum()), 32, generator=gen, dtype=torch.float64
    )
    layer = encoder.pooling_layer
    assert_float64_close(layer(noisy, mask), layer(states, mask))


def _by_hand(layer: LatentAttention, states, mask):
    """The released NV-Embed-v2 computation, one head, written out with an explicit softmax."""
    d_head = layer.dim_head
    q = F.layer_norm(states, (32,), layer.norm_queries.weight, layer.norm_queries.bias)
    q = q @ layer.to_q.weight.T  # (N, L, Dh)
    latents = F.layer_norm(layer.latents, (32,), layer.norm_latents.weight, layer.norm_latents.bias)
    k = latents @ layer.to_kv.weight[:d_head].T  # (R, Dh)
    v = latents @ layer.to_kv.weight[d_head:].T  # (R, Dh)
    logits = q @ k.T / math.sqrt(d_head)  # (N, L, R)
    weights = logits.exp() / logits.exp().sum(-1, keepdim=True)
    attended = (weights @ v) @ layer.to_out.weight.T + states  # (N, L, D)
    hidden = F.layer_norm(attended, (32,), layer.norm_mlp.weight, layer.norm_mlp.bias)
    hidden = hidden @ layer.mlp_in.weight.T + layer.mlp_in.bias
    value, gate = hidden[..., : 32 * layer.mlp_mult], hidden[..., 32 * layer.mlp_mult :]
    out = (value * F.gelu(gate)) @ layer.mlp_out.weight.T + layer.mlp_out.bias + attended
    m = mask[..., None].to(states.dtype)
    return (out * m).sum(1) / m.sum(1), attended - states


@pytest.mark.parametrize("num_latents", [1, 3])
def test_one_head_attention_by_hand(num_latents):
    """In float64: the hand computation sums in another order than the layer."""
    layer = LatentAttention(32, num_latents=num_latents, heads=1, dim_head=5, mlp_mult=2)
    _shuffle_weights(layer)
    layer.double()
    gen = torch.Generator().manual_seed(2)
    states = torch.randn(2, 4, 32, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    expected, attention_out = _by_hand(layer, states, mask)
    assert_float64_close(layer(states, mask), expected)
    if num_latents == 1:  # softmax over one key is 1: every token receives the same value
        value = layer.to_out(layer.to_kv(layer.norm_latents(layer.latents))[:, 5:])  # (1, D)
        assert_float64_close(attention_out, value.expand_as(attention_out))


def test_gradients_reach_the_latents_and_the_transformer(tiny_backbone):
    encoder = _encoder(tiny_backbone)
    batch = encoder.tokenize(SENTENCES)
    z = encoder(batch["input_ids"], batch["attention_mask"])
    (z * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert encoder.pooling_layer.latents.grad.abs().sum() > 0
    assert encoder.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_save_and_reload_give_the_same_embeddings(tmp_path, tiny_backbone):
    encoder = _encoder(tiny_backbone)
    _shuffle_weights(encoder.pooling_layer)
    save_sentence_transformer(encoder, tmp_path / "m")
    reloaded = load_sentence_encoder(tmp_path / "m")
    assert reloaded.pooler == "latent_attention"
    assert reloaded.pooling_layer.sizes() == {**TINY_SIZES}
    ours = encoder.encode(SENTENCES)
    assert torch.equal(reloaded.encode(SENTENCES), ours)
    # plain sentence-transformers: only with trust_remote_code (it imports the copied source file)
    from sentence_transformers import SentenceTransformer

    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(tmp_path / "m"), device="cpu")
    model = SentenceTransformer(str(tmp_path / "m"), device="cpu", trust_remote_code=True)
    theirs = torch.from_numpy(model.encode(SENTENCES, convert_to_numpy=True))
    assert torch.allclose(theirs, ours, atol=1e-5)
    # an override to a parameter-free pooler drops the layer
    assert load_sentence_encoder(tmp_path / "m", pooler="mean").pooling_layer is None


def test_bad_sizes_are_one_clear_line(tiny_backbone):
    with pytest.raises(ConfigError, match=r"model.latent_attention.heads=0"):
        _encoder(tiny_backbone, heads=0)
    with pytest.raises(ConfigError, match=r"unknown keys \['latents'\]"):
        _encoder(tiny_backbone, latents=4)


def test_momentum_keys_pool_with_the_live_layer(tiny_backbone):
    from csetrain.negatives.momentum_queue import MomentumQueue

    encoder = _encoder(tiny_backbone).eval()
    queue = MomentumQueue(size=4)
    queue.bind(encoder)  # the momentum copy starts as the online transformer
    batch = encoder.tokenize(SENTENCES)
    keys = queue.keys(encoder, batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(
        keys, encoder.pooled(batch["input_ids"], batch["attention_mask"]), atol=1e-5
    )


def test_three_training_steps_then_the_checkpoint_reloads(tmp_path):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(tmp_path, ["model.pooler=latent_attention", "trainer.max_steps=3"])
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    state = c.optimizer.state[c.encoder.pooling_layer.latents]
    assert state and state["step"] == 3  # the optimizer updated the latents every step
    c.checkpointer.save_best(c.encoder, 3, "eval/x", 0.0)  # as the loop keeps a best step
    best = c.checkpointer.load_best("cpu")
    assert best.pooler == "latent_attention"
    assert torch.allclose(best.encode(SENTENCES), c.encoder.encode(SENTENCES), atol=1e-5)
