"""Corpus readers, bad input, the tokenize-once cache, step batching and collation."""

import random

import pytest
import torch

from csetrain.augmentations.dropout import Dropout
from csetrain.config import ConfigError
from csetrain.data.cache import tokenized_dataset
from csetrain.data.collate import Collator, StepSampler, pad
from csetrain.data.sources import TextLines, TripletCSV


def test_text_lines_skip_blank_and_strip(tmp_path):
    (tmp_path / "c.txt").write_text("first line\n\n   \n  second line  \n")
    corpus = TextLines(["c.txt"], data_dir=str(tmp_path)).load()
    assert [r["anchor"] for r in corpus.records] == ["first line", "second line"]
    assert len(corpus.checksums["c.txt"]) == 64


def test_empty_corpus_is_refused(tmp_path):
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(ConfigError, match="no non-blank lines"):
        TextLines(["e.txt"], data_dir=str(tmp_path)).load()


def test_non_utf8_names_file_and_line(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"good\nbad \xff byte\n")
    with pytest.raises(ConfigError, match=r"b.txt:2: not valid UTF-8"):
        TextLines(["b.txt"], data_dir=str(tmp_path)).load()


def test_missing_file_names_path_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"corpus file not found: .*nope.txt \(set data.files"):
        TextLines(["nope.txt"], data_dir=str(tmp_path)).load()


def test_no_data_dir_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("CSETRAIN_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="paths.data_dir=.*CSETRAIN_DATA_DIR"):
        TextLines(["x.txt"], data_dir=None).load()


def test_triplet_csv_roles_and_bad_rows(tmp_path):
    (tmp_path / "ok.csv").write_text('sent0,sent1,hard_neg\n"a, with comma",b,c\n')
    corpus = TripletCSV("ok.csv", data_dir=str(tmp_path)).load()
    assert corpus.records == [{"anchor": "a, with comma", "positive": "b", "hard_negative": "c"}]
    (tmp_path / "hdr.csv").write_text("a,b,c\nx,y,z\n")
    with pytest.raises(ConfigError, match="header must be 'sent0,sent1,hard_neg'"):
        TripletCSV("hdr.csv", data_dir=str(tmp_path)).load()
    (tmp_path / "row.csv").write_text("sent0,sent1,hard_neg\nx,y,z\nonly,two\n")
    with pytest.raises(ConfigError, match=r"row.csv:3: expected 3 non-empty fields"):
        TripletCSV("row.csv", data_dir=str(tmp_path)).load()


def test_tokenized_cache_is_built_once_and_keyed(tmp_path, tiny_backbone):
    (tmp_path / "c.txt").write_text(
        "\n".join(f"sentence number {i} of the corpus" for i in range(50))
    )
    corpus = TextLines(["c.txt"], data_dir=str(tmp_path), max_length=6).load()
    first = tokenized_dataset(corpus, tiny_backbone.tokenizer, tmp_path / "cache")
    entries = list((tmp_path / "cache" / "tokenized").iterdir())
    assert len(entries) == 1
    assert max(len(ids) for ids in first["anchor_ids"]) == 6  # truncated at max_length
    again = tokenized_dataset(corpus, tiny_backbone.tokenizer, tmp_path / "cache")
    assert again["anchor_ids"] == first["anchor_ids"]
    assert list((tmp_path / "cache" / "tokenized").iterdir()) == entries  # reused, not rebuilt
    longer = TextLines(["c.txt"], data_dir=str(tmp_path), max_length=8).load()
    tokenized_dataset(longer, tiny_backbone.tokenizer, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 2  # new key


def test_step_sampler_is_a_function_of_step_and_covers_each_epoch():
    sampler = StepSampler(num_rows=10, batch_size=4, seed=3)
    seen = [i for step in range(5) for i in sampler.indices(step)]  # 20 = two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # reshuffled per epoch
    fresh = StepSampler(10, 4, 3)
    assert fresh.indices(3) == sampler.indices(3)  # resumable: no hidden state
    assert StepSampler(10, 4, 4).indices(0) != sampler.indices(0)


def test_batch_larger_than_corpus_is_refused():
    with pytest.raises(ConfigError, match="trainer.batch_size=8 exceeds"):
        StepSampler(5, 8, 0)


def test_pad_right_pads_and_masks():
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pad_equals_the_tokenizers_pad(tiny_encoder):
    gen = random.Random(0)
    rows = [
        [101, *[gen.randrange(5, 90) for _ in range(gen.randint(0, 30))], 102] for _ in range(64)
    ]
    tokenizer = tiny_encoder.tokenizer
    ids, mask = pad(rows, tokenizer.pad_token_id)
    reference = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    assert torch.equal(ids, reference["input_ids"]) and ids.dtype == torch.long
    assert torch.equal(mask, reference["attention_mask"]) and mask.dtype == torch.long


def test_collator_builds_field_major_views():
    collate = Collator(
        ("anchor",), Dropout(), pad_id=0, special_ids={101, 102}, augmented_positive=True, seed=0
    )
    batch = collate({"anchor_ids": [[101, 5, 102], [101, 6, 7, 102]]}, step=0)
    assert batch.fields == ("anchor", "positive") and batch.size == 2
    assert batch.input_ids.shape == (4, 4)
    assert torch.equal(batch.input_ids[:2], batch.input_ids[2:])  # dropout: identical tokens
    z = torch.arange(8.0).view(4, 2)
    views = batch.split(z)
    assert torch.equal(views["anchor"], z[:2]) and torch.equal(views["positive"], z[2:])


def test_collator_reads_supervised_fields_from_data():
    collate = Collator(
        ("anchor", "positive", "hard_negative"),
        Dropout(),
        0,
        set(),
        augmented_positive=False,
        seed=0,
    )
    batch = collate(
        {"anchor_ids": [[1]], "positive_ids": [[2, 3]], "hard_negative_ids": [[4]]}, step=0
    )
    assert batch.fields == ("anchor", "positive", "hard_negative")
    assert batch.input_ids.tolist() == [[1, 0], [2, 3], [4, 0]]


def test_dropout_augmentation_is_identity():
    assert Dropout()([101, 7, 8, 102], {101, 102}, random.Random(0)) == [101, 7, 8, 102]


class _Upper:
    """A text-level augmentation: the positive is the upper-cased anchor text."""

    level = "text"

    def __call__(self, text, rng):
        return text.upper() + " x"


def test_text_level_augmentation_tokenizes_the_augmented_text(tiny_backbone):
    tok = tiny_backbone.tokenizer
    collate = Collator(
        ("anchor",),
        _Upper(),
        tok.pad_token_id,
        set(tok.all_special_ids),
        augmented_positive=True,
        seed=0,
        tokenizer=tok,
        max_length=5,
    )
    assert collate.columns == ["anchor_ids", "anchor"]
    texts = ["hello there world", "a b c d e f g"]
    batch = collate(
        {"anchor_ids": tok(texts, truncation=True, max_length=5)["input_ids"], "anchor": texts},
        step=0,
    )
    expected = tok([t.upper() + " x" for t in texts], truncation=True, max_length=5)["input_ids"]
    positives = [
        row[mask.bool()].tolist()
        for row, mask in zip(batch.input_ids[2:], batch.attention_mask[2:])
    ]
    assert positives == expected
