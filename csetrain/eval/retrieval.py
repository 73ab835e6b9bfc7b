"""Native retrieval evaluation (NanoBEIR-style) on any BEIR folder and split, scoring as mteb
scores its retrieval tasks, without mteb:

- documents are fed as `(title + " " + text).strip()` (csetrain/data/beir.py), queries as stored;
  the corpus is encoded once per evaluation, in length-sorted batches (`encoder.encode`);
- score = cosine of the L2-normalized float32 embeddings (mteb's `cos_sim`), an exact top-k by a
  matmul over the whole corpus (queries in blocks, memory bounded);
- ranking as pytrec_eval (trec_eval) ranks: score descending, ties broken by document id
  descending (mteb's own MRR sorts the same way); ties at the cut-off are all kept before the
  tie-break, so the top k is exact;
- metrics in float64 over the queries that have qrels (mteb drops the others): nDCG@k (gain =
  relevance, log2 discount, ideal from all judged documents), MAP@k (precision at each relevant
  hit, over all R relevant), Recall@k (hits / R), P@k, MRR@k (reciprocal rank of the first
  relevant hit), each ×100 like every csetrain score. mteb rounds its means to 5 decimals;
  these are not rounded (tests/test_retrieval.py: equal to mteb's to 1e-5).

`split=dev` with `dev_from=train` is the deterministic hold-out of the train queries
(`holdout_ids`) that data=scifact_train never trains on: what selection runs on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from csetrain.config import ConfigError, resolve_data_dir
from csetrain.data.beir import (
    HOLDOUT_SEED,
    HOLDOUT_SIZE,
    BEIRSplit,
    holdout_ids,
    read_split,
    restrict,
)
from csetrain.eval.mteb_encoder import fingerprint
from csetrain.eval.sts import EvalResult

QUERY_BLOCK = 256  # queries scored against the whole corpus at once
# Corpus embeddings by (weights fingerprint, corpus, batch size), in this process: the dev
# evaluation of a step and the test of the checkpoint saved there encode the corpus once.
_MEMORY: OrderedDict[str, torch.Tensor] = OrderedDict()
MEMORY_ENTRIES = 2


def ranked(
    scores: torch.Tensor, id_order: np.ndarray, depth: int, skip: list[int] | None = None
) -> list[np.ndarray]:
    """Per query (row of `scores`), the indices of its top `depth` documents: score descending,
    then document id descending (`id_order[j]`: rank of document j's id in ascending order).
    `skip[i]`: a document index query i may not retrieve (ignore_identical_ids), or -1."""
    depth = min(depth, scores.shape[1])
    kth = torch.topk(scores, depth, dim=1).values[:, -1]
    out = []
    for i, row in enumerate(scores.numpy()):
        candidates = np.flatnonzero(row >= kth[i].item())  # every tie at the cut-off
        if skip is not None and skip[i] >= 0:
            candidates = candidates[candidates != skip[i]]
        order = np.lexsort((-id_order[candidates], -row[candidates].astype(np.float64)))
        out.append(candidates[order][:depth])
    return out


def query_metrics(hits: list[int], judged: dict[str, int], ids: list[str], k: int) -> dict:
    """One query's metrics at cut-off k, from its ranked document indices `hits`."""
    relevant = {d: r for d, r in judged.items() if r > 0}
    top = [ids[j] for j in hits[:k]]
    gains = [relevant.get(d, 0) for d in top]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g)
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    found, precisions, first = 0, 0.0, 0.0
    for i, g in enumerate(gains):
        if g:
            found += 1
            precisions += found / (i + 1)
            first = first or 1.0 / (i + 1)
    total = len(relevant)
    return {
        f"ndcg_at_{k}": dcg / idcg if idcg else 0.0,
        f"map_at_{k}": precisions / total if total else 0.0,
        f"recall_at_{k}": found / total if total else 0.0,
        f"precision_at_{k}": found / k,
        f"mrr_at_{k}": first,
    }


def retrieval_metrics(
    rankings: dict[str, list[int]], qrels: dict[str, dict[str, int]], ids: list[str], k_values
) -> dict[str, float]:
    """Means over the queries (float64), ×100, of every metric at every k."""
    per_query = [
        {m: v for k in k_values for m, v in query_metrics(hits, qrels[q], ids, k).items()}
        for q, hits in rankings.items()
    ]
    return {
        m: 100 * float(np.mean([p[m] for p in per_query], dtype=np.float64)) for m in per_query[0]
    }


class RetrievalEvaluator:
    """nDCG/MAP/Recall/P/MRR at `k_values` on one split of a BEIR folder.

    `folder`: relative to the data directory, or absolute. `split`: a `qrels/<split>.tsv` name;
    `dev` with `dev_from: train` is the hold-out of `holdout_size` train queries instead (the
    split data=scifact_train leaves out). Metric keys `<protocol>/<name>[_<split>]/<metric>`;
    the primary is nDCG@10 (the first k). `depth`: documents ranked per query (mteb: 1,000).
    """

    protocol = "mteb"  # mteb's retrieval protocol (text, cosine, ties), computed natively

    def __init__(
        self,
        folder: str,
        name: str,
        split: str = "test",
        data_dir: str | None = None,
        dev_from: str | None = None,
        holdout_size: int = HOLDOUT_SIZE,
        holdout_seed: int = HOLDOUT_SEED,
        k_values: list[int] = (10, 100),
        depth: int = 1000,
        ignore_identical_ids: bool = False,
        batch_size: int = 128,
        progress: bool = False,
        compare_initial: bool = False,
        protocol: str = "mteb",
        cache_dir: str | None = None,
    ) -> None:
        if protocol != "mteb":
            raise ConfigError(
                f"eval.protocol='{protocol}': retrieval is scored by mteb's protocol only"
            )
        self.k_values = sorted(int(k) for k in k_values)
        if not self.k_values or self.k_values[0] < 1 or depth < self.k_values[-1]:
            raise ConfigError(
                f"eval.k_values={list(k_values)}: choose k >= 1, at most depth={depth}"
            )
        self.name, self.split, self.tasks = name, split, [name]
        self.depth, self.ignore_identical_ids = depth, ignore_identical_ids
        self.batch_size, self.progress, self.compare_initial = batch_size, progress, compare_initial
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        path = Path(folder).expanduser()
        path = path if path.is_absolute() else resolve_data_dir(data_dir) / path
        self.data = self._load(path, dev_from, holdout_size, holdout_seed)
        self.doc_ids = list(self.data.corpus)
        # id_order[j]: rank of doc j's id in ascending string order (trec_eval's tie-break)
        self.id_order = np.empty(len(self.doc_ids), dtype=np.int64)
        self.id_order[np.argsort(np.array(self.doc_ids, dtype=object), kind="stable")] = np.arange(
            len(self.doc_ids)
        )

    def _load(self, path: Path, dev_from, size: int, seed: int) -> BEIRSplit:
        if self.split == "dev" and dev_from:
            source = read_split(path, dev_from)
            return restrict(source, set(holdout_ids(source.qrels, size, seed)))
        return read_split(path, self.split)

    def label(self, task: str) -> str:
        return task if self.split == "test" else f"{task}_{self.split}"

    def rankings(self, encoder) -> dict[str, list[int]]:
        """Each query's ranked document indices (the top `depth`)."""
        queries = list(self.data.queries)
        q = encoder.encode([self.data.queries[i] for i in queries], self.batch_size, self.progress)
        d = self.corpus_vectors(encoder)
        q, d = (
            torch.nn.functional.normalize(q.float(), dim=1),
            torch.nn.functional.normalize(d.float(), dim=1),
        )
        position = {doc: j for j, doc in enumerate(self.doc_ids)}
        out = {}
        for start in range(0, len(queries), QUERY_BLOCK):
            block = queries[start : start + QUERY_BLOCK]
            skip = [position.get(qid, -1) for qid in block] if self.ignore_identical_ids else None
            scores = q[start : start + QUERY_BLOCK] @ d.T
            out.update(zip(block, ranked(scores, self.id_order, self.depth, skip)))
        return out

    def corpus_key(self, encoder) -> str:
        """What the corpus embeddings depend on: weights and settings, the corpus file, the
        batching; not the split, so dev and test of one folder share them."""
        corpus = {k: v for k, v in self.data.files.items() if k.startswith("corpus.")}
        parts = [fingerprint(encoder), corpus, self.batch_size]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def corpus_vectors(self, encoder) -> torch.Tensor:
        """The corpus embeddings of these weights: from this process's memory, from `cache_dir`
        (when set: e.g. the start model's, shared by runs from the same start), or encoded."""
        key = self.corpus_key(encoder)
        path = self.cache_dir / "corpus_embeddings" / f"{key}.pt" if self.cache_dir else None
        if key in _MEMORY:
            _MEMORY.move_to_end(key)
            return _MEMORY[key]
        if path is not None and path.is_file():
            vectors = torch.load(path, weights_only=True)
        else:
            vectors = encoder.encode(
                list(self.data.corpus.values()), self.batch_size, self.progress
            )
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(vectors, path.with_suffix(".tmp"))
                path.with_suffix(".tmp").rename(path)  # atomic: never half a file
        _MEMORY[key] = vectors
        while len(_MEMORY) > MEMORY_ENTRIES:
            _MEMORY.popitem(last=False)
        return vectors

    def __call__(self, encoder) -> EvalResult:
        rankings = self.rankings(encoder)
        scores = retrieval_metrics(rankings, self.data.qrels, self.doc_ids, self.k_values)
        label = self.label(self.name)
        metrics = {f"{self.protocol}/{label}/{m}": v for m, v in scores.items()}
        key = f"{self.protocol}/{label}/ndcg_at_{self.k_values[0]}"
        details = {
            "protocol": self.protocol,
            "split": self.split,
            "pairs": {label: len(self.data.queries)},
            "files": self.data.files,
        }
        return EvalResult(metrics, metrics[key], key, details)
