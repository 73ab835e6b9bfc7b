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


def _batch(lengths, width, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask  # right-padded with pad id 0


def _left_padded(ids, mask):
    """The same sentences with their padding moved to the left."""
    shifts = (mask.shape[1] - mask.sum(1)).tolist()
    roll = [torch.roll(row, s) for row, s in zip(ids, shifts)]
    return torch.stack(roll), torch.stack([torch.roll(m, s) for m, s in zip(mask, shifts)])


def _states(encoder, ids, mask):
    return encoder.token_states(ids, mask)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_causal_state_ignores_later_tokens_bidirectional_sees_them(architecture):
    ids, mask = _batch([7, 5], width=7)
    changed = ids.clone()
    changed[0, 5] += 1  # a later token of sentence 0
    for attention, unchanged in (("causal", True), ("bidirectional", False)):
        encoder = decoder(architecture, attention=attention).double().eval()
        before, after = _states(encoder, ids, mask), _states(encoder, changed, mask)
        # earlier tokens: bitwise equal under causal attention, changed under bidirectional
        assert torch.equal(before[0, :5], after[0, :5]) is unchanged, attention
        assert torch.equal(before[1], after[1])  # the other row never sees it


def test_default_attention_of_a_decoder_is_causal():
    ids, mask = _batch([6, 4], width=6)
    default = decoder().double().eval()
    causal = decoder(attention="causal").double().eval()
    assert torch.equal(_states(default, ids, mask), _states(causal, ids, mask))


@pytest.mark.parametrize("pooler", ["last_token", "mean"])
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_left_and_right_padding_give_the_same_embeddings(pooler, attention):
    ids, mask = _batch([7, 3, 5, 1], width=7)
    encoder = decoder(pooler=pooler, attention=attention).double().eval()
    right = encoder.inference(ids, mask)
    left = encoder.inference(*_left_padded(ids, mask))
    alone = torch.cat(
        [
            encoder.inference(ids[i : i + 1, :n], mask[i : i + 1, :n])
            for i, n in enumerate([7, 3, 5, 1])
        ]
    )
    torch.testing.assert_close(left, right, rtol=0, atol=1e-12)  # float64: rounding only
    torch.testing.assert_close(right, alone, rtol=0, atol=1e-12)  # padding changes nothing


def test_encode_pads_left_when_the_tokenizer_does():
    texts = ["a cat sat on the mat today", "hi", "the dog"]
    right = decoder().double()
    left = SentenceEncoder(tiny_decoder(dropout=0.0, padding_side="left"), pooler="last_token")
    left = left.double()
    batch = left.tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][1, 0] == 0  # really left-padded
    torch.testing.assert_close(left.encode(texts), right.encode(texts), rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_packed_forward_equals_padded_under_both_attentions(attention):
    ids, mask = _batch([7, 2, 5, 1, 3], width=7)
    encoder = decoder(attention=attention, pooler="mean").double().train()
    padded = encoder(ids, mask)
    encoder.packing = True
    packed = encoder(ids, mask)
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-12)
    lefts = encoder(*_left_padded(ids, mask))  # packing also takes left-padded batches
    torch.testing.assert_close(lefts, padded, rtol=0, atol=1e-12)


def test_packed_block_diagonal_mask_composes_with_causal_and_bidirectional():
    from csetrain.modeling.packing import packed_last_hidden_state

    ids, mask = _batch([6, 3, 4], width=6)
    changed = ids.clone()
    changed[0, 4] += 1  # a later token of sentence 0, packed next to the others
    for attention, unchanged in (("causal", True), ("bidirectional", False)):
        model = decoder(attention=attention).double().eval().transformer
        before = packed_last_hidden_state(model, ids, mask, attention)
        after = packed_last_hidden_state(model, changed, mask, attention)
        assert torch.equal(before[0, :4], after[0, :4]) is unchanged
        assert torch.equal(before[1:], after[1:])  # other sentences in the row: never


def test_attention_setting_is_checked():
    with pytest.raises(ConfigError, match="model.attention='sideways'"):
        decoder(attention="sideways")
    from csetrain.modeling.backbones import tiny

    with pytest.raises(ConfigError, match="bidirectional encoder"):
        SentenceEncoder(tiny(), attention="causal")
    with pytest.raises(ConfigError, match="first token sees only itself"):
        decoder(pooler="cls")
    decoder(pooler="cls", attention="bidirectional")  # its first token sees the sentence


@pytest.mark.parametrize(
    "attention,pooler,side",
    [
        ("causal", "last_token", "left"),
        ("bidirectional", "mean", "right"),
        ("bidirectional", "last_token", "left"),
    ],
)
def test_exported_decoder_gives_the_same_embeddings_in_sentence_transformers(
    tmp_path, attention, pooler, side
):
    from sentence_transformers import SentenceTransformer

    from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer

    texts = ["a cat sat on the mat", "hello", "the dog barked at the postman today"]
    backbone = tiny_decoder(dropout=0.0, padding_side=side)
    encoder = SentenceEncoder(backbone, pooler=pooler, attention=attention).eval()
    ours = encoder.encode(texts)
    save_sentence_transformer(encoder, tmp_path / "model")
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert st.tokenizer.padding_side == side
    for batch in (texts, texts[:1]):  # padded, and one text alone (no mask at all)
        theirs = torch.from_numpy(st.encode(batch))
        torch.testing.assert_close(theirs, ours[: len(batch)], rtol=0, atol=1e-5)
    reloaded = load_sentence_encoder(tmp_path / "model")
    assert reloaded.attention == attention
    torch.testing.assert_close(reloaded.encode(texts), ours, rtol=0, atol=1e-6)


def _bpe_llama_folder(folder, architecture="llama"):
    """A random decoder saved with a byte-level BPE tokenizer trained here, offline, on the
    bundled sample (BOS-only post-processing, as Llama's: no EOS; Llama's has no pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

    from csetrain.config import ASSETS_DIR

    lines = next((ASSETS_DIR / "sample").rglob("*.txt")).read_text().splitlines()[:2000]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        lines, trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>"])
    )
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    if architecture != "llama":  # Qwen2's tokenizer class would add a pad token past the vocab
        tokenizer.pad_token = "</s>"
    config = AutoConfig.for_model(
        architecture,
        vocab_size=600,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=37,
        head_dim=8,
        bos_token_id=0,
        eos_token_id=1,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_hf_decoder_appends_eos_pads_and_exports(tmp_path, architecture):
    """model=hf_decoder on a saved folder: EOS appended (Llama's tokenizer adds BOS only), the
    missing pad token set to EOS, left padding, and the export's tokenizer does the same in
    sentence-transformers (equal embeddings)."""
    from sentence_transformers import SentenceTransformer

    from csetrain.modeling.decoders import hf_decoder
    from csetrain.modeling.export import save_sentence_transformer

    folder = _bpe_llama_folder(tmp_path / "base", architecture)
    encoder = hf_decoder(str(folder), padding_side="left", pooler="last_token").eval()
    tokenizer = encoder.tokenizer
    ids = tokenizer("the cat")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    texts = ["the cat sat on the mat", "hello", "a much longer sentence about nothing at all"]
    ours = encoder.encode(texts)
    save_sentence_transformer(encoder, tmp_path / "model")
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert st.tokenize(["the cat"])["input_ids"][0, -1] == tokenizer.eos_token_id
    torch.testing.assert_close(torch.from_numpy(st.encode(texts)), ours, rtol=0, atol=1e-5)
    without = hf_decoder(str(folder), append_eos=False, pooler="last_token")
    assert without.tokenizer("the cat")["input_ids"][-1] != tokenizer.eos_token_id
