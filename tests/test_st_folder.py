"""Any sentence-transformers folder in, and out: modules.json is honoured (Transformer, Pooling in
each mode it declares, Dense, Normalize, max_seq_length, prompts); an unsupported module is a
one-line error naming it; load -> export round trips give sentence-transformers' own embeddings.

Compared in float64 (the libraries pad and batch differently; in float32 rounding alone moves
results ~1e-7, in float64 ~1e-15), so 1e-9 is loose against rounding and tight against any real
difference (a wrong pooling mode or a missing Normalize moves embeddings by far more).
"""

import json

import pytest
import torch

from csetrain.config import ConfigError
from csetrain.modeling.backbones import minilm_dir, tiny
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer

TEXTS = ["a man plays a guitar", "two dogs run in the field", "rain", "the market fell today"]
ATOL = 1e-9


def _st_embeddings(path) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu").double()
    return model.encode(TEXTS, convert_to_tensor=True, batch_size=len(TEXTS))


@torch.no_grad()
def _our_embeddings(encoder) -> torch.Tensor:
    tokens = encoder.tokenize(TEXTS)
    return encoder.double().eval().inference(tokens["input_ids"], tokens["attention_mask"])


def _st_folder(tmp_path, mode: str, normalize: bool = True, architecture: str = "bert"):
    """A folder written by sentence-transformers itself around a tiny random encoder."""
    from sentence_transformers import SentenceTransformer, models

    raw = tmp_path / "raw"
    backbone = tiny(architecture=architecture)
    backbone.model.save_pretrained(raw)
    backbone.tokenizer.save_pretrained(raw)
    transformer = models.Transformer(str(raw), max_seq_length=64)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode=mode)
    modules = [transformer, pooling] + ([models.Normalize()] if normalize else [])
    model = SentenceTransformer(modules=modules, device="cpu")
    model.prompts = {"query": "query: "}
    model.save(str(tmp_path / "st"))
    return tmp_path / "st"


@pytest.mark.parametrize("mode", ["cls", "mean", "max", "mean_sqrt_len_tokens", "lasttoken"])
def test_every_pooling_mode_loads_with_sentence_transformers_embeddings(tmp_path, mode):
    folder = _st_folder(tmp_path, mode)
    encoder = load_sentence_encoder(folder)
    assert encoder.normalize and encoder.max_seq_length == 64
    assert encoder.prompts == {"query": "query: "}
    torch.testing.assert_close(_our_embeddings(encoder), _st_embeddings(folder), atol=ATOL, rtol=0)


@pytest.mark.parametrize("architecture", ["mpnet", "distilbert"])
def test_round_trip_load_export_equals_the_original(tmp_path, architecture):
    folder = _st_folder(tmp_path, "mean", architecture=architecture)
    out = save_sentence_transformer(load_sentence_encoder(folder), tmp_path / "out")
    torch.testing.assert_close(_st_embeddings(out), _st_embeddings(folder), atol=ATOL, rtol=0)
    settings = json.loads((out / "config_sentence_transformers.json").read_text())
    assert settings["prompts"] == {"query": "query: "}
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 64


def test_minilm_round_trip_equals_sentence_transformers(tmp_path):
    original = minilm_dir()
    encoder = load_sentence_encoder(original)
    assert encoder.pooler == "mean" and encoder.normalize and encoder.max_seq_length == 256
    out = save_sentence_transformer(encoder, tmp_path / "minilm")
    expected = _st_embeddings(original)
    torch.testing.assert_close(_st_embeddings(out), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(_our_embeddings(encoder), expected, atol=ATOL, rtol=0)


def test_unsupported_modules_are_one_line_errors(tmp_path):
    folder = _st_folder(tmp_path, "weightedmean")
    with pytest.raises(ConfigError, match="pooling .*weightedmean.* cannot be loaded"):
        load_sentence_encoder(folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["type"] = "sentence_transformers.models.LSTM"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="module 'sentence_transformers.models.LSTM' cannot"):
        load_sentence_encoder(folder)
