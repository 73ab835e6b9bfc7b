"""LoRA/DoRA adapters through peft (csetrain/modeling/lora.py): only adapters (and the pooler)
train, export merges them (embeddings equal to the unmerged model's, read back by
sentence-transformers), the adapter alone round-trips through peft, resume state holds them."""

import pytest
import torch

from csetrain.config import ConfigError
from csetrain.modeling.decoders import tiny_decoder
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer
from csetrain.modeling.lora import frozen_keys, trainable_state

TEXTS = ["a cat sat on the mat", "hello", "the dog barked at the postman", "rain again"]


def lora_encoder(pooler="last_token", **lora):
    settings = {"r": 4, "alpha": 8, **lora}
    return SentenceEncoder(
        tiny_decoder(dropout=0.0),
        pooler=pooler,
        lora=settings,
        latent_attention={"num_latents": 4, "heads": 2, "dim_head": 8},
    )


def _perturb_adapters(encoder, seed=0):
    """LoRA's B starts at zero (merging would be trivial): give every adapter weight a value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in encoder.transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def test_only_adapters_and_the_pooler_train():
    encoder = lora_encoder(pooler="latent_attention")
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("pooling_layer.") for n in trainable)
    assert any(n.startswith("pooling_layer.") for n in trainable)
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.5)
    batch = encoder.tokenize(TEXTS)
    encoder(batch["input_ids"], batch["attention_mask"]).pow(2).sum().backward()
    optimizer.step()
    changed = {n for n, p in encoder.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable  # the frozen base did not move
    assert any("lora_B" in n for n in changed)


@pytest.mark.parametrize("dora", [False, True])
def test_merged_export_equals_the_unmerged_model(tmp_path, dora):
    from sentence_transformers import SentenceTransformer

    encoder = lora_encoder(dora=dora).eval()
    _perturb_adapters(encoder)
    unmerged = encoder.encode(TEXTS)
    save_sentence_transformer(encoder, tmp_path / "model")
    assert torch.equal(encoder.encode(TEXTS), unmerged)  # merging worked on a copy
    assert not (tmp_path / "model" / "adapter").exists()  # only with save_adapter
    reloaded = load_sentence_encoder(tmp_path / "model")
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())  # a plain model
    torch.testing.assert_close(reloaded.encode(TEXTS), unmerged, rtol=0, atol=1e-5)
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    ours = torch.from_numpy(st.encode(TEXTS))
    torch.testing.assert_close(ours, unmerged, rtol=0, atol=1e-5)


def test_adapter_alone_round_trips_through_peft(tmp_path):
    from peft import PeftModel

    encoder = lora_encoder(save_adapter=True).eval()
    _perturb_adapters(encoder)
    save_sentence_transformer(encoder, tmp_path / "model")
    assert (tmp_path / "model" / "adapter" / "adapter_config.json").is_file()
    plain = SentenceEncoder(tiny_decoder(dropout=0.0), pooler="last_token").eval()
    plain.transformer = PeftModel.from_pretrained(plain.transformer, tmp_path / "model" / "adapter")
    torch.testing.assert_close(plain.encode(TEXTS), encoder.encode(TEXTS), rtol=0, atol=0)


def test_resume_state_holds_adapters_not_the_frozen_base():
    encoder = lora_encoder(pooler="latent_attention")
    _perturb_adapters(encoder)
    state = trainable_state(encoder)
    assert any("lora_" in k for k in state) and any(k.startswith("pooling_layer.") for k in state)
    assert not set(state) & frozen_keys(encoder)
    assert frozen_keys(encoder) == {k for k in encoder.state_dict() if k not in state}
    fresh = lora_encoder(pooler="latent_attention")
    from csetrain.modeling.lora import load_trainable_state

    load_trainable_state(fresh, state)
    for k, v in encoder.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_bad_lora_settings_are_one_line():
    with pytest.raises(ConfigError, match="model.lora has unknown keys"):
        lora_encoder(rank=3)
    with pytest.raises(ConfigError, match="model.lora.r=0"):
        lora_encoder(r=0)
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        lora_encoder(target_modules=["no_such_layer"])
