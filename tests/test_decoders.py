"""Decoder backbones (csetrain/modeling/decoders.py): tiny random Llama/Mistral/Qwen/Gemma, the
4-D attention mask (causal vs bidirectional, with padding and packing), padding-side invariance."""

import pytest
import torch

from csetrain.config import ConfigError
from csetrain.modeling.decoders import tiny_decoder
from csetrain.modeling.encoder import SentenceEncoder

ARCHITECTURES = ["llama", "mistral", "qwen3", "gemma"]


def decoder(architecture="llama", **settings):
    backbone = tiny_decoder(architecture, dropout=0.0)
    return SentenceEncoder(backbone, pooler=settings.pop("pooler", "last_token"), **settings)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tiny_decoders_build_and_encode(architecture):
    encoder = decoder(architecture)
    z = encoder.encode(["a cat sat on the mat", "hello"])
    assert z.shape == (2, 32) and torch.isfinite(z).all()
    assert encoder.transformer.config.num_key_value_heads == 2  # grouped-query attention


def test_an_encoder_is_not_a_decoder():
    with pytest.raises(ConfigError, match="not a decoder"):
        tiny_decoder("bert")
