"""Encoder: poolers by hand, head modes, and the sentence-transformers export round trip.

Where encode() (batches sorted by length, padded to their own width) is compared with another
computation, both run in float64: the float32 rounding of another summation order differs
between CPUs. Comparisons of the same operations on the same tensors stay in float32."""

import copy

import pytest
import torch

from csetrain.config import ConfigError
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer
from csetrain.modeling.pooling import pool

from .tolerances import assert_float32_of_float64_close

SENTENCES = ["a cat sits on the mat .", "the quick brown fox jumps over the lazy dog", "hello"]


def _states_and_mask():
    gen = torch.Generator().manual_seed(0)
    layers = tuple(torch.randn(2, 4, 3, generator=gen) for _ in range(3))  # (N, L, D) x 3 layers
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    return layers, mask


def test_poolers_by_hand():
    layers, mask = _states_and_mask()
    last, first = layers[-1], layers[1]
    assert torch.equal(pool("cls", layers, mask), last[:, 0])
    expected_mean = torch.stack([last[0, :3].mean(0), last[1, :2].mean(0)])
    assert torch.allclose(pool("mean", layers, mask), expected_mean)
    avg = (first + last) / 2
    expected_fl = torch.stack([avg[0, :3].mean(0), avg[1, :2].mean(0)])
    assert torch.allclose(pool("first_last_avg", layers, mask), expected_fl)


def test_unknown_pooler_and_head_fail_clearly(tiny_backbone):
    with pytest.raises(ConfigError, match="model.pooler='maximum'"):
        SentenceEncoder(tiny_backbone, pooler="maximum")
    with pytest.raises(ConfigError, match="model.mlp_head"):
        SentenceEncoder(tiny_backbone, mlp_head="sometimes")


def test_train_only_head_shapes_training_but_not_inference(tiny_backbone):
    encoder = SentenceEncoder(tiny_backbone, pooler="cls", mlp_head="train_only")
    encoder = copy.deepcopy(encoder).double().eval()  # the shared backbone stays float32
    batch = encoder.tokenize(SENTENCES)
    raw = encoder.pooled(batch["input_ids"], batch["attention_mask"])
    trained_view = encoder(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(trained_view, torch.tanh(encoder.head[0](raw)))  # the same operations
    assert_float32_of_float64_close(encoder.encode(SENTENCES), raw)  # cls_before_pooler


def test_always_head_is_applied_at_inference(tiny_backbone):
    encoder = SentenceEncoder(tiny_backbone, pooler="cls", mlp_head="always")
    encoder = copy.deepcopy(encoder).double().eval()
    batch = encoder.tokenize(SENTENCES)
    raw = encoder.pooled(batch["input_ids"], batch["attention_mask"])
    assert_float32_of_float64_close(encoder.encode(SENTENCES), torch.tanh(encoder.head[0](raw)))


def test_head_initialised_like_simcse(tiny_backbone):
    encoder = SentenceEncoder(tiny_backbone, mlp_head="always")
    weight = encoder.head[0].weight
    assert torch.count_nonzero(encoder.head[0].bias) == 0
    assert abs(weight.std().item() - tiny_backbone.model.config.initializer_range) < 0.005


@pytest.mark.parametrize(
    ("pooler", "head"),
    [("cls", "none"), ("mean", "none"), ("cls", "always"), ("cls", "train_only")],
)
def test_export_round_trip_csetrain(tmp_path, tiny_backbone, pooler, head):
    encoder = SentenceEncoder(tiny_backbone, pooler=pooler, mlp_head=head)
    save_sentence_transformer(encoder, tmp_path / "m")
    reloaded = load_sentence_encoder(tmp_path / "m")
    assert reloaded.pooler == pooler
    assert torch.allclose(reloaded.encode(SENTENCES), encoder.encode(SENTENCES), atol=1e-6)


@pytest.mark.parametrize(("pooler", "head"), [("mean", "none"), ("cls", "always")])
def test_sentence_transformers_loads_export_with_identical_embeddings(
    tmp_path, tiny_backbone, pooler, head
):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    encoder = SentenceEncoder(tiny_backbone, pooler=pooler, mlp_head=head)
    with torch.no_grad():  # make the head matter: not near-identity
        if encoder.head is not None:
            encoder.head[0].weight.normal_(0, 0.5)
    save_sentence_transformer(encoder, tmp_path / "m")
    st = sentence_transformers.SentenceTransformer(str(tmp_path / "m"), device="cpu").double()
    ours = copy.deepcopy(encoder).double().encode(SENTENCES)  # float64, rounded to float32
    theirs = torch.from_numpy(st.encode(SENTENCES, convert_to_numpy=True))  # float64
    assert_float32_of_float64_close(ours, theirs)


def test_first_last_avg_export_refused(tmp_path, tiny_backbone):
    with pytest.raises(ConfigError, match="no sentence-transformers equivalent"):
        save_sentence_transformer(
            SentenceEncoder(tiny_backbone, pooler="first_last_avg"), tmp_path / "m"
        )
    assert not (tmp_path / "m").exists()


def test_loading_a_non_model_folder_names_it(tmp_path):
    with pytest.raises(ConfigError, match="not a saved model folder"):
        load_sentence_encoder(tmp_path)


def test_minilm_matches_sentence_transformers(minilm):
    """Our MiniLM (transformers + mean pooling) vs sentence-transformers on the same folder."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from csetrain.modeling.backbones import minilm_dir

    st = sentence_transformers.SentenceTransformer(str(minilm_dir()), device="cpu").double()
    theirs = torch.from_numpy(
        st.encode(SENTENCES, convert_to_numpy=True)
    )  # normalized by its last module
    ours = copy.deepcopy(minilm).double().encode(SENTENCES)  # the session's MiniLM stays float32
    assert_float32_of_float64_close(torch.nn.functional.normalize(ours.double(), dim=-1), theirs)


def test_layer_and_dim_choose_the_inference_embedding(tiny_backbone):
    tiny_backbone = copy.deepcopy(tiny_backbone)
    tiny_backbone.model.double()
    encoder = SentenceEncoder(tiny_backbone, pooler="mean").eval()
    batch = encoder.tokenize(SENTENCES)
    layers = encoder.embed_layers(batch["input_ids"], batch["attention_mask"], head=False)
    assert len(layers) == encoder.num_layers
    assert torch.allclose(
        layers[-1], encoder.pooled(batch["input_ids"], batch["attention_mask"]), atol=1e-6
    )
    first = SentenceEncoder(tiny_backbone, pooler="mean", layer=1, dim=8)
    out = first.encode(SENTENCES)
    assert out.shape == (3, 8)
    assert_float32_of_float64_close(out, layers[0][:, :8])  # a prefix of layer 1's embedding
    with pytest.raises(ConfigError, match="model.layer=3"):
        SentenceEncoder(tiny_backbone, layer=3)
    with pytest.raises(ConfigError, match="model.dim=99"):
        SentenceEncoder(tiny_backbone, dim=99)


def test_layer_and_dim_survive_export_to_sentence_transformers(tmp_path, tiny_backbone):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    encoder = SentenceEncoder(tiny_backbone, pooler="cls", mlp_head="always", layer=1, dim=12)
    save_sentence_transformer(encoder, tmp_path / "m")
    ours = encoder.encode(SENTENCES)
    assert torch.allclose(load_sentence_encoder(tmp_path / "m").encode(SENTENCES), ours, atol=1e-5)
    st = sentence_transformers.SentenceTransformer(str(tmp_path / "m"), device="cpu").double()
    ours = copy.deepcopy(encoder).double().encode(SENTENCES)
    assert_float32_of_float64_close(ours, torch.from_numpy(st.encode(SENTENCES)))


def test_last_token_pooling_under_right_and_left_padding():
    from csetrain.modeling.pooling import last_token_pool, max_pool, mean_sqrt_len_pool

    states = torch.arange(2 * 4 * 3, dtype=torch.float64).view(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(last_token_pool((states,), right), states[[0, 1], [1, 3]])
    assert torch.equal(last_token_pool((states,), left), states[[0, 1], [3, 3]])
    assert torch.equal(max_pool((states,), right)[0], states[0, 1])  # padding never wins
    by_hand = (states[0, 0] + states[0, 1]) / 2**0.5
    torch.testing.assert_close(mean_sqrt_len_pool((states,), right)[0], by_hand, rtol=1e-15, atol=0)
