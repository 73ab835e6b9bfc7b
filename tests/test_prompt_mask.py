"""NV-Embed's instruction masking (csetrain/modeling/prompt_mask.py): the prompt's tokens attend
but are left out of the pooled vector, under right and left padding, for mean and latent-attention
pooling, in training forwards (packed too); the export declares include_prompt=false so
sentence-transformers pools the same tokens."""

import pytest
import torch

from csetrain.data.sources import instruction_prefix
from csetrain.modeling.decoders import tiny_decoder
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.prompt_mask import prompt_token_ids, without_prompts

PROMPT = instruction_prefix("Retrieve semantically similar text.")
TEXTS = ["a cat sat on the mat", "hello there", "the dog barked at the postman"]
LATENT = {"num_latents": 4, "heads": 2, "dim_head": 8}


def _encoder(pooler="mean", side="right", attention="bidirectional"):
    backbone = tiny_decoder(dropout=0.0, padding_side=side)
    encoder = SentenceEncoder(
        backbone, pooler=pooler, attention=attention, mask_instruction=True, latent_attention=LATENT
    )
    encoder.prompts = {"query": PROMPT}
    return encoder.double().eval()


def test_mask_by_hand():
    ids = torch.tensor(
        [[0, 0, 5, 6, 7, 8], [5, 6, 9, 0, 0, 0], [5, 6, 0, 0, 0, 0], [7, 5, 6, 1, 0, 0]]
    )
    mask = (ids != 0).long()
    keep = without_prompts(ids, mask, [torch.tensor([5, 6])])
    assert keep.tolist() == [
        [0, 0, 0, 0, 1, 1],  # left-padded, prompt then text
        [0, 0, 1, 0, 0, 0],  # right-padded
        [1, 1, 0, 0, 0, 0],  # only the prompt: kept whole (an empty mean has no value)
        [1, 1, 1, 1, 0, 0],  # the prompt's ids later in the row: not a prompt
    ]


def test_prompt_ids_open_the_tokenized_text():
    tokenizer = tiny_decoder().tokenizer
    (ids,) = prompt_token_ids(tokenizer, {"query": PROMPT})
    full = tokenizer(PROMPT + TEXTS[0])["input_ids"]
    assert full[: len(ids)] == ids.tolist() and ids[0] == tokenizer.cls_token_id
    assert len(full) > len(ids) + 1  # the text's own tokens and [SEP] follow


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
    encoder.mask_instruction = False  # the same weights (random latents) without the mask
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
    ours = encoder.encode([PROMPT + t for t in TEXTS])
    save_sentence_transformer(encoder, tmp_path / "model")
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    theirs = torch.from_numpy(st.encode(TEXTS, prompt_name="query"))
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
