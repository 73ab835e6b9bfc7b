"""NV-Embed's instruction masking on decoders (`model.include_prompt=false`, the mechanism of
csetrain/modeling/prompts.py): the prompt's tokens attend but are left out of the pooled vector,
under right and left padding, for mean and latent-attention pooling, in training forwards (packed
too); the export declares include_prompt=false so sentence-transformers pools the same tokens."""

import pytest
import torch

from csetrain.data.sources import instruction_prefix
from csetrain.modeling.decoders import tiny_decoder
from csetrain.modeling.encoder import SentenceEncoder

PROMPT = instruction_prefix("Retrieve semantically similar text.")
TEXTS = ["a cat sat on the mat", "hello there", "the dog barked at the postman"]
LATENT = {"num_latents": 4, "heads": 2, "dim_head": 8}


def _encoder(pooler="mean", side="right", attention="bidirectional"):
    backbone = tiny_decoder(dropout=0.0, padding_side=side)
    encoder = SentenceEncoder(
        backbone, pooler=pooler, attention=attention, include_prompt=False, latent_attention=LATENT
    )
    encoder.prompts = {"query": PROMPT}
    return encoder.double().eval()


@pytest.mark.parametrize("pooler", ["mean", "latent_attention"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_leaves_the_instruction_out(pooler, side):
    encoder = _encoder(pooler, side)
    batch = encoder.tokenizer(
        [PROMPT + t for t in TEXTS] + TEXTS, padding=True, return_tensors="pt"
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    z = encoder.inference(ids, mask)
    states = encoder.token_states(ids, mask)
    k = len(encoder.tokenizer(PROMPT.rstrip())["input_ids"]) - 1  # [CLS] + prompt, no [SEP]
    hand = mask.clone()
    for row in range(len(TEXTS)):  # instructed rows: their first k real tokens out
        first = int(mask[row].argmax())
        hand[row, first : first + k] = 0
    expected = (
        encoder.pooling_layer(states, hand)
        if pooler == "latent_attention"
        else (states * hand[..., None]).sum(1) / hand.sum(1, keepdim=True)
    )
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-12)
    encoder.include_prompt = True  # the same weights (random latents) without the mask
    unmasked = encoder.inference(ids, mask)
    assert not torch.allclose(unmasked[:3], z[:3])  # the mask mattered
    torch.testing.assert_close(unmasked[3:], z[3:], rtol=0, atol=0)  # rows without a prompt


def test_packed_training_forward_masks_the_same_tokens():
    encoder = _encoder("mean").train()
    batch = encoder.tokenize([PROMPT + t for t in TEXTS] + TEXTS)
    padded = encoder(batch["input_ids"], batch["attention_mask"])
    encoder.packing = True
    packed = encoder(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-12)


def test_export_pools_like_sentence_transformers_with_the_prompt(tmp_path):
    from sentence_transformers import SentenceTransformer

    from csetrain.modeling.export import save_sentence_transformer

    encoder = _encoder("mean").float()
    ours = encoder.encode(TEXTS, prompt=PROMPT)
    rows = encoder.tokenize([PROMPT + t for t in TEXTS])  # the training rule: found by ids
    by_ids = encoder.inference(rows["input_ids"], rows["attention_mask"])
    torch.testing.assert_close(by_ids, ours, rtol=0, atol=1e-6)
    save_sentence_transformer(encoder, tmp_path / "model")
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    theirs = torch.from_numpy(st.encode(TEXTS, prompt_name="query"))
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
