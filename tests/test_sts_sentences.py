"""STS sentences as an unlabelled corpus: distinct sentences in first-appearance order, no CSV
quoting, header skipped; the data option reads the STS-B train split of the data pack."""

import pytest

from csetrain.app.settings import instantiate
from csetrain.config import ConfigError
from csetrain.data.sts_sentences import STSSentences

from .test_config import _compose


def test_distinct_sentences_in_order_without_quoting(tmp_path):
    (tmp_path / "pairs.tsv").write_text(
        'score\tsentence1\tsentence2\n1.0\tA "quoted\tB\n2.0\tB\tC\n3.0\tA "quoted\tD\n',
        encoding="utf-8",
    )
    corpus = STSSentences(["pairs.tsv"], data_dir=str(tmp_path)).load()
    assert [r["anchor"] for r in corpus.records] == ['A "quoted', "B", "C", "D"]
    assert corpus.fields == ("anchor",) and "pairs.tsv" in corpus.checksums
    limited = STSSentences(["pairs.tsv"], data_dir=str(tmp_path), max_sentences=2).load()
    assert len(limited.records) == 2


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data.files"):
        STSSentences(["nope.tsv"], data_dir=str(tmp_path)).load()


def test_stsb_train_sentences_option(data_dir):
    cfg = _compose(["data=stsb_train_sentences", f"paths.data_dir={data_dir}"])
    corpus = instantiate(cfg.data).load()
    sentences = [r["anchor"] for r in corpus.records]
    assert len(sentences) == len(set(sentences)) == 10_536  # of 2 x 5,749 sentences
    assert sentences[:2] == ["A plane is taking off.", "An air plane is taking off."]
    assert any('"' in s for s in sentences)  # quotes kept, rows not merged
