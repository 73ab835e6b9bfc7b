"""Offline hard-negative mining (`csetrain mine`): a frozen teacher embeds the queries and a
candidate corpus once, an exact top-`depth` search ranks the candidates, NV-Retriever's
TopK-PercPos (positive_aware.topk_percpos) keeps k of them, and the rows are written as a
`.jsonl` that `data=files` reads. So mining is done once per corpus, not once per run.

NV-Retriever (arXiv 2407.15831) mines with a fixed teacher (e5-mistral) over the corpus of
passages; here the teacher is any model option or saved folder, and the corpus is a file or,
by default, every positive and hard negative of the training data.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from csetrain.checkpoint import write_text_atomic
from csetrain.config import ConfigError
from csetrain.negatives.mined_index import nearest_neighbours
from csetrain.negatives.positive_aware import topk_percpos

LAYOUTS = ("triplet", "n-tuple")


def candidate_pool(records: list[dict], corpus: list[str] | None = None) -> list[str]:
    """The distinct candidate texts: the given corpus, else every positive and hard negative
    of the records (first-appearance order, so the pool is the same on every run)."""
    if corpus is not None:
        return list(dict.fromkeys(corpus))
    texts = [r[f] for r in records for f in ("positive", "hard_negative") if r.get(f)]
    return list(dict.fromkeys(texts))


def embed(teacher, texts: list[str], batch_size: int, prefix: str = "") -> Tensor:
    """Unit teacher embeddings (N, D) in float32, input order."""
    with torch.no_grad():
        vectors = teacher.encode([prefix + t for t in texts], batch_size=batch_size)
    return F.normalize(vectors.float(), dim=-1)


def excluded_pairs(records: list[dict], pool: list[str], depth_idx: Tensor) -> Tensor:
    """(Q, depth) True where candidate j of row i is one of its anchor's positives (any row with
    the same anchor) or the anchor text itself: never a negative."""
    position = {text: i for i, text in enumerate(pool)}
    own: dict[str, set[int]] = {}
    for r in records:
        ids = own.setdefault(r["anchor"], set())
        for text in (r.get("positive"), r["anchor"]):
            if text in position:
                ids.add(position[text])
    width = len(pool)
    keys = torch.tensor(
        [i * width + j for i, r in enumerate(records) for j in own[r["anchor"]]] or [-1]
    )
    rows = torch.arange(len(records))[:, None]
    return torch.isin(rows * width + depth_idx, keys)


def mine_negatives(
    teacher,
    records: list[dict],
    k: int = 7,
    fraction: float = 0.95,
    depth: int = 100,
    corpus: list[str] | None = None,
    batch_size: int = 256,
    query_prefix: str = "",
) -> tuple[list[dict], dict[str, int]]:
    """Each (anchor, positive) row with its k mined negatives, best first: rows
    {anchor, positive, negatives: [...], scores: [...], positive_score}; rows with fewer than k
    surviving candidates are dropped (counted in the stats, raise `depth` to keep them)."""
    if any(not r.get("positive") for r in records):
        raise ConfigError(
            "csetrain mine needs (anchor, positive) rows: TopK-PercPos compares with the positive's score"
        )
    if k < 1 or depth < k:
        raise ConfigError(f"mine.k={k}, mine.depth={depth}: need 1 <= k <= depth")
    pool = candidate_pool(records, corpus)
    anchors = list(dict.fromkeys(r["anchor"] for r in records))
    anchor_row = {a: i for i, a in enumerate(anchors)}
    queries = embed(teacher, anchors, batch_size, query_prefix)
    keys = embed(teacher, pool, batch_size)
    q = queries[[anchor_row[r["anchor"]] for r in records]]  # (Q, D), one per record
    positives = embed(teacher, [r["positive"] for r in records], batch_size)
    positive_scores = (q * positives).sum(-1)
    scores, idx = nearest_neighbours(q, keys, depth)
    scores = scores.masked_fill(excluded_pairs(records, pool, idx), float("inf"))
    picked = topk_percpos(scores, idx, positive_scores, k, fraction)
    picked_scores = scores.gather(1, _rank_of(idx, picked))
    rows = []
    for r, ids, sc, pos in zip(records, picked.tolist(), picked_scores.tolist(), positive_scores):
        if min(ids) >= 0:
            rows.append(
                {
                    "anchor": r["anchor"],
                    "positive": r["positive"],
                    "negatives": [pool[j] for j in ids],
                    "scores": sc,
                    "positive_score": float(pos),
                }
            )
    return rows, {"rows": len(records), "kept": len(rows), "candidates": len(pool)}


def _rank_of(idx: Tensor, picked: Tensor) -> Tensor:
    """Column of each picked candidate in its row of idx (0 where picked is -1)."""
    match = idx[:, None, :] == picked[:, :, None]  # (Q, k, depth)
    return match.float().argmax(dim=2)


def mined_lines(rows: list[dict], layout: str) -> list[dict]:
    """The rows as data=files reads them. triplet: one {anchor, positive, negative} line per
    mined negative (the sentence-transformers triplet layout); n-tuple: one line per row with
    negative_1..negative_k (sentence-transformers' mine_hard_negatives n-tuple layout)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"mine.layout='{layout}': choose one of {list(LAYOUTS)}")
    if layout == "triplet":
        return [
            {"anchor": r["anchor"], "positive": r["positive"], "negative": n}
            for r in rows
            for n in r["negatives"]
        ]
    return [
        {
            "anchor": r["anchor"],
            "positive": r["positive"],
            **{f"negative_{i + 1}": n for i, n in enumerate(r["negatives"])},
        }
        for r in rows
    ]


def write_mined(rows: list[dict], path: str | Path, layout: str = "triplet") -> Path:
    """Write the mined rows as JSON lines, atomically (a reader never sees half a file)."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise ConfigError(f"mine.output='{path}': give a .jsonl path (data=files reads it)")
    lines = mined_lines(rows, layout)
    write_text_atomic(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return path
