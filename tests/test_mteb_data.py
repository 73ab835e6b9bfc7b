"""MTEB tasks beyond STS from local files (mteb_data.py) through mteb's own evaluators: the data
pack's rows equal MTEB's published descriptive statistics, and mteb's retrieval, summarization
and classification evaluators on injected slices equal scores computed by hand."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

pytest.importorskip("mteb")

from csetrain.config import ConfigError  # noqa: E402
from csetrain.eval.mteb import MTEBEvaluator  # noqa: E402
from csetrain.eval.mteb_data import folder_data  # noqa: E402

from .test_mteb import _HashedWords  # noqa: E402

STATS = Path(__import__("mteb").__file__).parent / "descriptive_stats"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_pack_rows_equal_mtebs_descriptive_statistics(data_dir):
    """Banking77 test, AmazonCounterfactual en test and SciFact: counts and characters equal
    the statistics mteb ships for the hub copies (so the injected data is MTEB's data)."""
    banking = folder_data("B", data_dir / "mteb" / "Banking77Classification", "k")
    stats = json.loads((STATS / "Classification" / "Banking77Classification.json").read_text())
    test = banking.dataset["default"]["test"]
    assert len(test) == stats["test"]["num_samples"] == 3080
    assert sum(map(len, test["text"])) == stats["test"]["text_statistics"]["total_text_length"]
    amazon = folder_data("A", data_dir / "mteb" / "AmazonCounterfactualClassification", "k")
    assert list(amazon.dataset) == ["en"] and amazon.rows["en/test"] == 670
    scifact = folder_data("S", data_dir / "mteb" / "SciFact", "k").dataset["default"]["test"]
    stats = json.loads((STATS / "Retrieval" / "SciFact.json").read_text())["test"]
    docs = [
        (t + " " + x).strip() for t, x in zip(scifact["corpus"]["title"], scifact["corpus"]["text"])
    ]
    assert len(docs) == stats["num_documents"] and len(scifact["queries"]) == stats["num_queries"]
    assert sum(map(len, docs)) == stats["documents_text_statistics"]["total_text_length"]
    assert sum(map(len, scifact["relevant_docs"].values())) == 339


def _ndcg_at_10(ranked: list[str], relevant: set[str]) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(10, len(relevant))))
    return dcg / ideal


def _cosines(encoder, queries: list[str], docs: list[str]) -> np.ndarray:
    q = encoder.encode(queries).numpy()
    d = encoder.encode(docs).numpy()
    q, d = (
        q / np.linalg.norm(q, axis=1, keepdims=True),
        d / np.linalg.norm(d, axis=1, keepdims=True),
    )
    return q @ d.T


def test_beir_folder_scores_ndcg_by_hand(tmp_path):
    """A BEIR folder (title + text documents, gzip corpus, qrels with header) under a stock
    retrieval task's name: mteb's nDCG@10 = the textbook formula on cosine rankings."""
    import gzip

    words = ["cell", "gene", "protein", "virus", "brain", "heart", "lung", "drug", "dose", "trial"]
    docs = [
        {
            "_id": f"d{i}",
            "title": words[i % 10],
            "text": " ".join([*words[(i * 3) % 10 :][:4], f"n{i}"]),
        }
        for i in range(14)
    ]
    with gzip.open(tmp_path / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    queries = [{"_id": "q1", "text": "gene protein"}, {"_id": "q2", "text": "heart drug trial"}]
    _write_jsonl(tmp_path / "queries.jsonl", queries)
    qrels = {"q1": {"d1", "d4"}, "q2": {"d2"}}
    (tmp_path / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"] + [
        f"{q}\t{d}\t1" for q, ds in qrels.items() for d in sorted(ds)
    ]
    (tmp_path / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    encoder = _HashedWords()
    result = MTEBEvaluator(["SciFact"], local_tasks={"SciFact": str(tmp_path)})(encoder)
    texts = [(d["title"] + " " + d["text"]).strip() for d in docs]
    scores = _cosines(encoder, [q["text"] for q in queries], texts)
    by_hand = [
        _ndcg_at_10([docs[i]["_id"] for i in np.argsort(-row, kind="stable")], qrels[q["_id"]])
        for q, row in zip(queries, scores)
    ]
    assert result.primary_key == "mteb/SciFact/ndcg_at_10"
    assert result.primary == pytest.approx(100 * np.mean(by_hand), abs=1e-3)  # mteb: 5 decimals
    assert result.details["rows"]["SciFact"] == {"test/corpus": 14, "test/queries": 2}


def test_max_rows_keeps_the_judged_documents(data_dir):
    data = folder_data("SciFact", data_dir / "mteb" / "SciFact", "k", max_rows=5)
    test = data.dataset["default"]["test"]
    judged = {d for docs in test["relevant_docs"].values() for d in docs}
    assert len(test["queries"]) == 5 and judged <= set(test["corpus"]["id"])
    assert len(test["corpus"]) <= 5 + len(judged)


def _summeval_by_hand(encoder, rows: list[dict]) -> tuple[float, float]:
    """Per article: each machine summary's best cosine to the human ones, Spearman against the
    relevance; v2 = mean statistic, v1 = mean of statistics and p-values together (mteb#1156)."""
    v1, v2 = [], []
    for row in rows:
        best = _cosines(encoder, row["machine_summaries"], row["human_summaries"]).max(axis=1)
        stat = spearmanr(row["relevance"], best)
        v1 += [stat.statistic, stat.pvalue]
        v2.append(stat.statistic)
    return 100 * float(np.mean(v1)), 100 * float(np.mean(v2))


def test_summeval_in_both_semantics_by_hand(data_dir):
    encoder = _HashedWords()
    tasks = ["SummEval", "SummEvalSummarization.v2"]
    result = MTEBEvaluator(tasks, str(data_dir), max_rows=4)(encoder)
    rows = [json.loads(line) for line in (data_dir / "mteb/SummEval/test.jsonl").open()][:4]
    v1, v2 = _summeval_by_hand(encoder, rows)
    assert result.metrics["mteb/SummEval/main_score"] == pytest.approx(v1, abs=1e-6)
    assert result.metrics["mteb/SummEvalSummarization.v2/main_score"] == pytest.approx(v2, abs=1e-6)
    # one dataset, one vote: the v2 re-scoring is reported, not averaged in
    assert result.metrics["mteb/type/Summarization"] == result.metrics["mteb/SummEval/main_score"]
    assert [r["in_means"] for r in result.details["summary"]] == [True, False]
    assert "v1 semantics" in result.details["summary"][0]["protocol"]
    assert "v2 semantics" in result.details["summary"][1]["protocol"]


def test_classification_jsonl_folder_separable_and_swapped(tmp_path):
    """mteb's logistic-regression protocol on JSON Lines splits: words that decide the label
    give 100% accuracy; the same test set with labels swapped gives 0%."""
    train = [
        {"text": f"{w} item {i}", "label": int(w == "beta")}
        for i in range(20)
        for w in ("alpha", "beta")
    ]
    test = [
        {"text": f"{w} thing {i}", "label": int(w == "beta")}
        for i in range(5)
        for w in ("alpha", "beta")
    ]
    right, swapped = tmp_path / "right", tmp_path / "swapped"
    _write_jsonl(right / "train.jsonl", train)
    _write_jsonl(right / "test.jsonl", test)
    _write_jsonl(swapped / "train.jsonl", train)
    _write_jsonl(swapped / "test.jsonl", [{**r, "label": 1 - r["label"]} for r in test])
    scores = {
        name: MTEBEvaluator(
            ["Banking77Classification"], local_tasks={"Banking77Classification": str(folder)}
        )(_HashedWords()).primary
        for name, folder in (("right", right), ("swapped", swapped))
    }
    assert scores == {"right": 100.0, "swapped": 0.0}


def test_a_task_without_its_split_is_one_clear_line(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}])
    with pytest.raises(ConfigError, match="Banking77Classification is scored on \\['test'\\]"):
        MTEBEvaluator(
            ["Banking77Classification"], local_tasks={"Banking77Classification": str(tmp_path)}
        )(_HashedWords())


def test_array_columns_give_mtebs_own_classification_scores(data_dir):
    """csetrain's evaluator formats classification data for whole-array column reads; every score
    mteb reports (10 undersampled experiments, each metric) equals mteb on the data as loaded."""
    import mteb

    from csetrain.eval.mteb import leaderboard_filters, mteb_task
    from csetrain.eval.mteb_encoder import MTEBEncoder

    names = ["Banking77Classification", "AmazonCounterfactualClassification"]
    evaluator = MTEBEvaluator(names, str(data_dir), max_rows=400)
    ours = evaluator(_HashedWords()).details["tasks"]
    plain = [mteb_task(t, evaluator.data[t], leaderboard_filters()) for t in names]
    theirs = mteb.evaluate(MTEBEncoder(_HashedWords()), plain, cache=None, co2_tracker=False)
    for result in theirs.task_results:
        assert ours[result.task_name]["scores"] == result.scores
        assert 0 < result.get_score() < 1  # a real score, not an empty or saturated one
