"""Any AutoModel encoder: tiny random configs of seven architectures (no download) load with
SDPA or, where the class has none, eager attention; take `model.dropout` through their own config
keys; train 2 steps; export as a sentence-transformers folder that sentence-transformers loads
with the same embeddings, and that csetrain reloads with the same embeddings.

Embeddings are compared in float64 on both sides: the libraries batch and pad differently, which
in float32 moves results by rounding alone; in float64 that is ~1e-15, so 1e-9 is loose against
rounding and far below any real difference (a wrong pooling or a missing layer moves them by >1e-2).
"""

import pytest
import torch

from csetrain.config import ConfigError
from csetrain.modeling.backbones import dropout_keys, model_kwargs, set_dropout, tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer
from csetrain.objectives.simcse_unsup import SimCSEUnsup

from .test_objectives import _unsup_batch

ARCHITECTURES = [
    "bert",
    "roberta",
    "mpnet",
    "distilbert",
    "xlm-roberta",
    "deberta-v2",
    "modernbert",
]
TEXTS = ["a man plays a guitar", "two dogs run", "the market fell sharply today", "rain"]
ATOL = 1e-9  # float64, see the module docstring


def _train_two_steps(encoder: SentenceEncoder) -> None:
    objective, batch = SimCSEUnsup(), _unsup_batch(encoder)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    encoder.train()
    for _ in range(2):
        loss = objective(encoder, batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@torch.no_grad()
def _float64_embeddings(encoder: SentenceEncoder) -> torch.Tensor:
    """Inference embeddings of TEXTS as one padded float64 batch."""
    tokens = encoder.tokenize(TEXTS)
    return encoder.double().eval().inference(tokens["input_ids"], tokens["attention_mask"])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tiny_architecture_trains_exports_and_reloads(architecture, tmp_path):
    from sentence_transformers import SentenceTransformer

    backbone = tiny(architecture=architecture)
    assert backbone.model.config.model_type == architecture
    assert not hasattr(backbone.model, "pooler") or backbone.model.pooler is None
    encoder = SentenceEncoder(backbone, pooler="mean")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    _train_two_steps(encoder)
    assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())

    folder = save_sentence_transformer(encoder, tmp_path / architecture)
    ours = _float64_embeddings(encoder)
    theirs = SentenceTransformer(str(folder), device="cpu").double()
    st = theirs.encode(TEXTS, convert_to_tensor=True, batch_size=len(TEXTS))
    assert st.dtype == torch.float64
    torch.testing.assert_close(st, ours, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        _float64_embeddings(load_sentence_encoder(folder)), ours, atol=ATOL, rtol=0
    )


def test_attention_is_sdpa_where_supported_else_eager():
    assert tiny(architecture="bert").model.config._attn_implementation == "sdpa"
    assert tiny(architecture="mpnet").model.config._attn_implementation == "eager"


def test_dropout_goes_through_each_architectures_own_keys():
    assert set(dropout_keys(tiny(architecture="distilbert").model.config)) == {
        "dropout",
        "attention_dropout",
    }
    config = tiny(architecture="modernbert", dropout=0.3).model.config
    assert {k: getattr(config, k) for k in dropout_keys(config)} == {
        "attention_dropout": 0.3,
        "embedding_dropout": 0.3,
        "mlp_dropout": 0.3,
    }
    assert config.classifier_dropout != 0.3  # a task head's setting is left alone


def test_an_architecture_without_dropout_keys_refuses_model_dropout():
    config = tiny(architecture="bert").model.config
    for key in dropout_keys(config):
        delattr(config, key)
    with pytest.raises(ConfigError, match="model.dropout=0.1: bert has no dropout setting"):
        set_dropout(config, 0.1)


def test_no_pooling_layer_and_no_remote_code():
    kwargs = model_kwargs(tiny(architecture="roberta").model.config)
    assert kwargs["add_pooling_layer"] is False and kwargs["trust_remote_code"] is False
    assert "add_pooling_layer" not in model_kwargs(tiny(architecture="distilbert").model.config)


def test_roberta_family_length_limit_leaves_room_for_the_padding_offset():
    encoder = SentenceEncoder(tiny(architecture="roberta"), pooler="mean")
    assert encoder.max_length == 512
    long = " ".join(["word"] * 700)
    assert encoder.tokenize([long])["input_ids"].shape[1] == 512
    assert torch.isfinite(encoder.encode([long])).all()  # no position beyond the table


def test_model_hf_loads_any_encoder_folder(tmp_path):
    from csetrain.app.settings import instantiate

    from .test_config import _compose

    _saved_tiny(tmp_path, "distilbert")
    cfg = _compose(["model=hf", f"model.name_or_path={tmp_path}", "model.dropout=0.2"])
    encoder = instantiate(cfg.model)
    assert encoder.config.model_type == "distilbert" and encoder.config.dropout == 0.2
    assert encoder.encode(["a sentence"]).shape == (1, 32)


def _saved_tiny(folder, architecture="bert"):
    backbone = tiny(architecture=architecture)
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    return folder


def test_corrupt_or_pickled_weights_are_one_line_errors(tmp_path):
    from safetensors.torch import load_file

    from csetrain.modeling.backbones import from_pretrained

    corrupt = _saved_tiny(tmp_path / "corrupt")
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ConfigError, match="model.safetensors is corrupt or truncated"):
        from_pretrained(str(corrupt))
    pickled = _saved_tiny(tmp_path / "pickled")
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no file named model.safetensors"):
        from_pretrained(str(pickled))


def test_remote_code_is_refused_without_a_prompt(tmp_path):
    import json

    from csetrain.modeling.backbones import from_pretrained

    folder = _saved_tiny(tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ConfigError, match="cannot load model"):
        from_pretrained(str(folder))
