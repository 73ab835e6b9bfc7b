"""The native retrieval evaluator (csetrain/eval/retrieval.py) against hand-computed values,
pytrec_eval itself (ties included) and mteb's whole SciFact pipeline (to 1e-5: mteb rounds its
means to 5 decimals), and its refusal as a selection evaluator on a test split."""

import gzip
import json
import math

import numpy as np
import pytest
import torch

from csetrain.config import ConfigError
from csetrain.eval.retrieval import RetrievalEvaluator, query_metrics, ranked, retrieval_metrics

METRICS = ("ndcg_at_10", "mrr_at_10", "recall_at_10", "recall_at_100", "map_at_100")


def test_one_query_by_hand():
    ids = ["d1", "d2", "d3", "d4", "d5"]
    got = query_metrics([0, 1, 2, 3, 4], {"d2": 1, "d4": 2, "d5": 0}, ids, 2)
    ideal = 2 + 1 / math.log2(3)  # gains 2, 1 at ranks 1, 2
    assert got == pytest.approx(
        {
            "ndcg_at_2": (1 / math.log2(3)) / ideal,
            "map_at_2": (1 / 2) / 2,  # precision 1/2 at the one hit, over R = 2 relevant
            "recall_at_2": 1 / 2,
            "precision_at_2": 1 / 2,
            "mrr_at_2": 1 / 2,
        },
        rel=1e-15,
    )


class Memo:
    """An encoder whose vectors are computed once per text, so two evaluators see the same ones."""

    def __init__(self, encoder):
        self.encoder, self.memo = encoder, {}
        self.source, self.output_dim = encoder.source, encoder.output_dim

    def encode(self, sentences, batch_size=128, progress=False):
        new = [s for s in dict.fromkeys(sentences) if s not in self.memo]
        if new:
            self.memo.update(zip(new, self.encoder.encode(new, batch_size, progress)))
        return torch.stack([self.memo[s] for s in sentences])

    def parameters(self):
        return self.encoder.parameters()


def test_ties_rank_as_pytrec_eval_and_mtebs_mrr():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(0)
    ids = [str(i) for i in rng.permutation(300)] + ["a", "B", "_", "Z"]  # string order matters
    scores = torch.tensor(rng.integers(0, 8, (40, len(ids))) / 8, dtype=torch.float32)  # many ties
    qrels = {
        f"q{i}": {ids[j]: int(rng.integers(1, 3)) for j in rng.choice(len(ids), 4)}
        for i in range(40)
    }
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    id_order = np.empty(len(ids), dtype=np.int64)
    id_order[order] = np.arange(len(ids))
    rankings = dict(zip(qrels, ranked(scores, id_order, depth=100)))
    mine = retrieval_metrics(rankings, qrels, ids, [10, 100])
    run = {q: {d: float(s) for d, s in zip(ids, scores[i].tolist())} for i, q in enumerate(qrels)}
    measures = {"ndcg_cut.10,100", "map_cut.10,100", "recall.10,100", "P.10,100"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for ours, theirs in (
        ("ndcg_at", "ndcg_cut"),
        ("map_at", "map_cut"),
        ("recall_at", "recall"),
        ("precision_at", "P"),
    ):
        for k in (10, 100):
            expected = 100 * np.mean([per_query[q][f"{theirs}_{k}"] for q in qrels])
            assert mine[f"{ours}_{k}"] == pytest.approx(expected, abs=1e-10)
    mteb_metrics = pytest.importorskip("mteb._evaluators.retrieval_metrics")
    mrr = mteb_metrics.mrr(qrels, run, [10, 100])
    assert mine["mrr_at_10"] == pytest.approx(100 * np.mean(mrr["MRR@10"]), abs=1e-10)


def mteb_scores(folder, split, encoder):
    """mteb's SciFact task, its data injected from the BEIR `folder`, scored on `encoder`."""
    mteb = pytest.importorskip("mteb")
    from datasets import Dataset

    from csetrain.data.beir import read_qrels
    from csetrain.eval.mteb_encoder import MTEBEncoder

    name = "corpus.jsonl.gz" if (folder / "corpus.jsonl.gz").is_file() else "corpus.jsonl"
    with (gzip.open if name.endswith(".gz") else open)(folder / name, "rt") as f:
        docs = [json.loads(line) for line in f]
    queries_file = folder / ("queries.jsonl" if split == "test" else f"queries_{split}.jsonl")
    queries = [json.loads(line) for line in queries_file.read_text().splitlines()]
    task = mteb.get_task("SciFact")
    columns = {"id": [str(d["_id"]) for d in docs], "title": [d["title"] for d in docs]}
    task.dataset = {
        "default": {
            "test": {
                "corpus": Dataset.from_dict({**columns, "text": [d["text"] for d in docs]}),
                "queries": Dataset.from_dict(
                    {k: [q[f] for q in queries] for k, f in (("id", "_id"), ("text", "text"))}
                ),
                "relevant_docs": read_qrels(folder / "qrels" / f"{split}.tsv"),
                "top_ranked": None,
            }
        }
    }
    task.data_loaded = True
    result = mteb.evaluate(
        MTEBEncoder(encoder), [task], cache=None, co2_tracker=False, show_progress_bar=False
    )
    return result.task_results[0].scores["test"][0]


def assert_equal_to_mteb(ours: dict, theirs: dict, label: str):
    for metric in METRICS + ("ndcg_at_100", "map_at_10", "precision_at_10", "mrr_at_100"):
        assert ours[f"mteb/{label}/{metric}"] / 100 == pytest.approx(theirs[metric], abs=1e-5), (
            metric
        )


@pytest.fixture
def scifact_slice(data_dir, tmp_path):
    """SciFact test cut to 40 claims, their cited abstracts and 300 more documents."""
    source = data_dir / "mteb" / "SciFact"
    lines = (source / "qrels" / "test.tsv").read_text().splitlines()
    queries = [json.loads(line) for line in (source / "queries.jsonl").read_text().splitlines()][
        :40
    ]
    keep = {q["_id"] for q in queries}
    qrels = [line for line in lines[1:] if line.split("\t")[0] in keep]
    cited = {line.split("\t")[1] for line in qrels}
    with gzip.open(source / "corpus.jsonl.gz", "rt") as f:
        docs = [d for i, d in enumerate(f) if i < 300 or json.loads(d)["_id"] in cited]
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("\n".join([lines[0], *qrels]) + "\n")
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "corpus.jsonl").write_text("".join(docs))
    return tmp_path


def test_equals_mteb_on_a_scifact_slice_with_a_tiny_model(scifact_slice, tiny_encoder):
    encoder = Memo(tiny_encoder)
    ours = RetrievalEvaluator(str(scifact_slice), "slice", split="test")(encoder)
    assert ours.primary_key == "mteb/slice/ndcg_at_10" and ours.details["pairs"] == {"slice": 40}
    assert_equal_to_mteb(ours.metrics, mteb_scores(scifact_slice, "test", encoder), "slice")


@pytest.mark.slow
def test_equals_mteb_on_scifact_test_with_minilm(data_dir):
    # ~5 min on 2 cores: 5,183 abstracts cut at 256 tokens, as `model=minilm-l6` and the
    # published run (nDCG@10 0.64508) cut them.
    from csetrain.modeling.backbones import minilm_l6
    from csetrain.modeling.encoder import SentenceEncoder

    encoder = Memo(SentenceEncoder(minilm_l6(), pooler="mean", max_seq_length=256))
    ours = RetrievalEvaluator("mteb/SciFact", "scifact", split="test", data_dir=str(data_dir))(
        encoder
    )
    theirs = mteb_scores(data_dir / "mteb" / "SciFact", "test", encoder)
    assert_equal_to_mteb(ours.metrics, theirs, "scifact")
    assert theirs["ndcg_at_10"] == pytest.approx(0.64508, abs=5e-6)


def test_dev_split_is_the_hold_out_of_the_train_claims(data_dir):
    from csetrain.data.beir import holdout_ids, read_split

    dev = RetrievalEvaluator(
        "mteb/SciFact", "scifact", split="dev", dev_from="train", data_dir=str(data_dir)
    )
    assert set(dev.data.queries) == set(
        holdout_ids(read_split(data_dir / "mteb" / "SciFact", "train").qrels)
    )
    assert dev.label("scifact") == "scifact_dev" and len(dev.data.corpus) == 5183
    with pytest.raises(ConfigError, match=r"eval.k_values=\[0\]"):
        RetrievalEvaluator("mteb/SciFact", "scifact", k_values=[0], data_dir=str(data_dir))


def test_the_corpus_is_encoded_once_per_weights(scifact_slice, tiny_encoder, tmp_path, monkeypatch):
    from csetrain.eval import retrieval

    calls, encode = [], tiny_encoder.encode
    monkeypatch.setattr(tiny_encoder, "encode", lambda s, *a: calls.append(len(s)) or encode(s, *a))
    cache = tmp_path / "cache"
    evaluator = RetrievalEvaluator(str(scifact_slice), "slice", cache_dir=str(cache))
    first = evaluator(tiny_encoder).metrics
    documents = len(evaluator.data.corpus)
    assert calls == [40, documents]
    assert evaluator(tiny_encoder).metrics == first and calls[2:] == [40]  # from memory
    retrieval._MEMORY.clear()
    assert evaluator(tiny_encoder).metrics == first and calls[3:] == [40]  # from cache_dir
    with torch.no_grad():
        next(tiny_encoder.parameters()).add_(0.01)  # new weights: encoded again
    evaluator(tiny_encoder)
    assert calls[4:] == [40, documents]
