"""BEIR folders (csetrain/data/beir.py): the reader on the real SciFact files, the deterministic
hold-out, and data=scifact_train's rows, which never contain a held-out claim or its qrels."""

import gzip
import json
import random

import pytest
from omegaconf import OmegaConf

from csetrain.app.settings import config_dir
from csetrain.config import ConfigError
from csetrain.data.beir import BEIRPairs, holdout_ids, read_split


@pytest.fixture(scope="module")
def scifact(data_dir):
    return data_dir / "mteb" / "SciFact"


def test_scifact_splits_have_the_published_counts(scifact):
    train, test = read_split(scifact, "train"), read_split(scifact, "test")
    assert len(train.corpus) == 5183
    assert (len(train.queries), sum(map(len, train.qrels.values()))) == (809, 919)
    assert (len(test.queries), sum(map(len, test.qrels.values()))) == (300, 339)
    # mteb's document text; its published character total (SciFact README) over all documents
    assert sum(len(t) for t in train.corpus.values()) == 7_771_451
    with gzip.open(scifact / "corpus.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    assert train.corpus[first["_id"]] == (first["title"] + " " + first["text"]).strip()


def test_holdout_depends_on_ids_and_seed_only(scifact):
    ids = list(read_split(scifact, "train").qrels)
    held = holdout_ids(ids)
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert holdout_ids(shuffled) == held and len(set(held)) == 100
    assert set(holdout_ids(ids, seed=1)) != set(held)
    with pytest.raises(ConfigError, match="holdout size 809"):
        holdout_ids(ids, size=809)


def test_training_rows_never_hold_a_held_out_claim_or_qrel(scifact):
    split = read_split(scifact, "train")
    held = set(holdout_ids(split.qrels))
    held_texts = {split.queries[q] for q in held}
    corpus = BEIRPairs(str(scifact), split="train").load()
    text_to_ids = {}
    for qid, text in split.queries.items():
        text_to_ids.setdefault(text, set()).add(qid)
    held_pairs = {(split.queries[q], split.corpus[d]) for q in held for d in split.qrels[q]}
    assert corpus.fields == ("anchor", "positive", "hard_negative")
    # 919 qrels minus the 115 of the held-out claims, minus 2 of train claims whose text
    # repeats a held-out claim's text under another id
    assert len(corpus.records) == 802
    for row in corpus.records:
        assert row["anchor"] not in held_texts
        assert (row["anchor"], row["positive"]) not in held_pairs
        cited = {split.corpus[d] for q in text_to_ids[row["anchor"]] for d in split.qrels[q]}
        assert row["positive"] in cited and row["hard_negative"] not in cited
    assert BEIRPairs(str(scifact), split="train").load().records == corpus.records  # seeded
    other = BEIRPairs(str(scifact), split="train", seed=1).load().records
    assert [r["hard_negative"] for r in other] != [r["hard_negative"] for r in corpus.records]


def test_k_negatives_per_row_are_distinct_and_named_like_data_files(scifact):
    corpus = BEIRPairs(str(scifact), negatives=3, max_sentences=50).load()
    assert corpus.fields == (
        "anchor",
        "positive",
        "hard_negative_1",
        "hard_negative_2",
        "hard_negative_3",
    )
    for row in corpus.records:
        assert len({row[f] for f in corpus.fields[2:]} | {row["positive"]}) == 4
    assert BEIRPairs(str(scifact), negatives=0).load().fields == ("anchor", "positive")


def test_the_data_option_and_the_dev_evaluator_hold_out_the_same_claims():
    data = OmegaConf.load(config_dir() / "data" / "scifact_train.yaml")
    dev = OmegaConf.load(config_dir() / "eval" / "retrieval_dev.yaml")
    assert (
        (data.holdout_size, data.holdout_seed) == (dev.holdout_size, dev.holdout_seed) == (100, 0)
    )
    assert (dev.split, dev.dev_from, data.split) == ("dev", "train", "train")


def _folder(
    tmp_path,
    corpus="",
    queries='{"_id": "q1", "text": "a"}\n',
    qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\n",
):
    (tmp_path / "qrels").mkdir(parents=True, exist_ok=True)
    if corpus is not None:
        (tmp_path / "corpus.jsonl").write_text(
            corpus or '{"_id": "d1", "title": "", "text": "x"}\n'
        )
    (tmp_path / "queries.jsonl").write_text(queries)
    (tmp_path / "qrels" / "test.tsv").write_text(qrels)
    return tmp_path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no corpus", r"no corpus\.jsonl\(\.gz\) in"),
        ("bad json", r"corpus\.jsonl: not a readable JSON Lines corpus file"),
        ("no text key", r"corpus\.jsonl:1: a corpus row needs the keys \['_id', 'text'\]"),
        ("bad header", r"test\.tsv: expected the header 'query-id<TAB>corpus-id<TAB>score'"),
        ("unknown doc", r"test\.tsv: document d9 is not in corpus\.jsonl"),
        ("bad score", r"test\.tsv:2: expected query-id, corpus-id, integer score"),
    ],
)
def test_bad_folders_fail_with_one_line(tmp_path, kind, message):
    args = {
        "no corpus": {"corpus": None},
        "bad json": {"corpus": '{"_id": "d1", "text": \n'},
        "no text key": {"corpus": '{"_id": "d1"}\n'},
        "bad header": {"qrels": "q\td\ts\nq1\td1\t1\n"},
        "unknown doc": {"qrels": "query-id\tcorpus-id\tscore\nq1\td9\t1\n"},
        "bad score": {"qrels": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"},
    }[kind]
    with pytest.raises(ConfigError, match=message) as err:
        read_split(_folder(tmp_path, **args), "test")
    assert "\n" not in str(err.value)
