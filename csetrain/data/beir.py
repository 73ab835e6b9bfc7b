"""BEIR-format retrieval folders (`corpus.jsonl[.gz]`, `queries*.jsonl`, `qrels/<split>.tsv`):
the reader, the deterministic dev hold-out of the train queries, and `BEIRPairs`, the training
rows (query, relevant document, sampled corpus negatives) that `data=scifact_train` reads.

Document text is `(title + " " + text).strip()`, what mteb (and BEIR's sentence-transformers
models) feed the encoder. The hold-out: the train queries that have qrels, ranked by
sha256(f"{seed}:{query id}"), the first `size` of them; it depends on the ids and the seed
only (not on file order), and both the training rows and the dev evaluator compute it the
same way (`holdout_ids`), so the held-out queries and their qrels are never trained on.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from csetrain.config import ConfigError, require_file, resolve_data_dir
from csetrain.data.sources import Corpus, sha256_file

HOLDOUT_SIZE = 100  # train queries held out as the dev split (`scifact_dev`)
HOLDOUT_SEED = 0


@dataclass
class BEIRSplit:
    """One split of a BEIR folder: documents and queries by id, and the qrels of the split."""

    corpus: dict[str, str]  # doc id -> (title + " " + text).strip()
    queries: dict[str, str]  # query id -> text, only the queries that have qrels in this split
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}
    files: dict[str, str]  # file (relative to the folder) -> sha256


def _json_lines(path: Path, what: str, required: tuple[str, ...]) -> list[dict]:
    """The rows of a JSON Lines file (gzip if it ends in .gz), each checked for its keys."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or any(k not in row for k in required):
                    raise ConfigError(
                        f"{path}:{number}: a {what} row needs the keys {list(required)}; fix the row"
                    )
                rows.append(row)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as err:
        reason = str(err).splitlines()[0]
        raise ConfigError(
            f"{path}: not a readable JSON Lines {what} file ({reason}); fix or re-export it"
        ) from None
    return rows


def document_text(row: dict) -> str:
    """mteb's document text: title and text joined by a space, stripped."""
    return (str(row.get("title") or "") + " " + str(row["text"])).strip()


def read_corpus(folder: Path) -> tuple[dict[str, str], str]:
    """doc id -> text, in file order, and the file's name (corpus.jsonl or corpus.jsonl.gz)."""
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (folder / name).is_file():
            rows = _json_lines(folder / name, "corpus", ("_id", "text"))
            return {str(r["_id"]): document_text(r) for r in rows}, name
    raise ConfigError(f"no corpus.jsonl(.gz) in {folder}: point the BEIR folder setting at one")


def queries_file(folder: Path, split: str) -> Path:
    """`queries_<split>.jsonl` where the folder has one, else `queries.jsonl` (BEIR's layout)."""
    own = folder / f"queries_{split}.jsonl"
    return own if own.is_file() else require_file(folder / "queries.jsonl", "queries", "folder")


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """`query-id<TAB>corpus-id<TAB>score` with a header line."""
    lines = require_file(path, "qrels file", "split").read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t")[:2] != ["query-id", "corpus-id"]:
        raise ConfigError(f"{path}: expected the header 'query-id<TAB>corpus-id<TAB>score'")
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not parts[2].strip().lstrip("-").isdigit():
            raise ConfigError(f"{path}:{number}: expected query-id, corpus-id, integer score")
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def read_split(folder: str | Path, split: str) -> BEIRSplit:
    """The corpus, the queries of `split` that have qrels, and the split's qrels; every qrel's
    query and document must exist (a typo in an id would silently lower every score)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"BEIR folder {folder} does not exist: fix the folder setting")
    corpus, corpus_name = read_corpus(folder)
    qpath = queries_file(folder, split)
    texts = {str(r["_id"]): str(r["text"]) for r in _json_lines(qpath, "query", ("_id", "text"))}
    qrels_path = folder / "qrels" / f"{split}.tsv"
    qrels = read_qrels(qrels_path)
    for qid, docs in qrels.items():
        if qid not in texts:
            raise ConfigError(f"{qrels_path}: query {qid} is not in {qpath.name}")
        if missing := [d for d in docs if d not in corpus]:
            raise ConfigError(f"{qrels_path}: document {missing[0]} is not in {corpus_name}")
    files = {
        name: sha256_file(folder / name) for name in (corpus_name, qpath.name, f"qrels/{split}.tsv")
    }
    queries = {qid: texts[qid] for qid in texts if qid in qrels}
    return BEIRSplit(corpus, queries, qrels, files)


def holdout_ids(query_ids, size: int = HOLDOUT_SIZE, seed: int = HOLDOUT_SEED) -> list[str]:
    """The `size` ids first in sha256(f"{seed}:{id}") order: a hold-out that depends on the ids
    and the seed only, so a reordered file holds out the same queries."""
    ids = sorted(set(query_ids))
    if not 0 < size < len(ids):
        raise ConfigError(
            f"holdout size {size}: choose 1..{len(ids) - 1} of the {len(ids)} queries"
        )
    return sorted(ids, key=lambda q: hashlib.sha256(f"{seed}:{q}".encode()).hexdigest())[:size]


def restrict(split: BEIRSplit, keep: set[str]) -> BEIRSplit:
    """The split with only the queries in `keep` (and their qrels)."""
    return BEIRSplit(
        split.corpus,
        {q: t for q, t in split.queries.items() if q in keep},
        {q: d for q, d in split.qrels.items() if q in keep},
        split.files,
    )


def negative_fields(count: int) -> tuple[str, ...]:
    """`hard_negative` for one negative a row, `hard_negative_1..k` for k (data=files' naming)."""
    return (
        ("hard_negative",)
        if count == 1
        else tuple(f"hard_negative_{i}" for i in range(1, count + 1))
    )


def training_rows(split: BEIRSplit, held_out: set[str], negatives: int, seed: int) -> list[dict]:
    """One row per (query, relevant document) qrel of the queries not held out, in qrels order;
    `negatives` corpus documents per row drawn uniformly (seeded by `seed`, the query and the
    document) among those not relevant to that query. A query whose text equals a held-out
    query's text is left out as well, so no held-out claim is trained on under another id."""
    held_texts = {split.queries[q] for q in held_out}
    doc_ids = list(split.corpus)
    rows = []
    for qid, docs in split.qrels.items():
        if qid in held_out or split.queries[qid] in held_texts:
            continue
        relevant = {d for d, rel in docs.items() if rel > 0}
        if len(doc_ids) - len(relevant) < negatives:
            raise ConfigError(
                f"data.negatives={negatives}: query {qid} has fewer non-relevant documents"
            )
        for doc in sorted(relevant):
            rng = random.Random(f"{seed}:{qid}:{doc}")
            picked: list[str] = []
            while len(picked) < negatives:  # rejection: the corpus is far larger than `relevant`
                candidate = doc_ids[rng.randrange(len(doc_ids))]
                if candidate not in relevant and candidate not in picked:
                    picked.append(candidate)
            row = {"anchor": split.queries[qid], "positive": split.corpus[doc]}
            row.update({f: split.corpus[d] for f, d in zip(negative_fields(negatives), picked)})
            rows.append(row)
    return rows


class BEIRPairs:
    """Training rows from a BEIR folder's `split` (qrels/<split>.tsv): anchor = query,
    positive = a relevant document (one row per qrel pair), `negatives` sampled corpus documents
    that are not relevant to the query (0: none, pairs only). `holdout_size` queries are held out
    (`holdout_ids`) for the dev evaluator and never become rows."""

    def __init__(
        self,
        folder: str,
        data_dir: str | None = None,
        split: str = "train",
        name: str = "beir",
        negatives: int = 1,
        holdout_size: int = HOLDOUT_SIZE,
        holdout_seed: int = HOLDOUT_SEED,
        seed: int = 0,
        max_length: int = 256,
        max_sentences: int | None = None,
    ):
        if negatives < 0:
            raise ConfigError(f"data.negatives={negatives}: choose 0 or more negatives a row")
        self.folder, self.data_dir, self.split, self.name = folder, data_dir, split, name
        self.negatives, self.seed = negatives, seed
        self.holdout_size, self.holdout_seed = holdout_size, holdout_seed
        self.max_length, self.max_sentences = max_length, max_sentences

    def load(self) -> Corpus:
        folder = Path(self.folder).expanduser()
        if not folder.is_absolute():
            folder = resolve_data_dir(self.data_dir) / folder
        split = read_split(folder, self.split)
        size, seed = self.holdout_size, self.holdout_seed
        held = set(holdout_ids(split.qrels, size, seed)) if size else set()
        rows = training_rows(split, held, self.negatives, self.seed)[: self.max_sentences or None]
        fields = ("anchor", "positive") + (
            negative_fields(self.negatives) if self.negatives else ()
        )
        # The records depend on these settings, not only on the files: they key the token cache.
        name = f"{self.name}-h{self.holdout_size}s{self.holdout_seed}-k{self.negatives}s{self.seed}"
        trained = len({r["anchor"] for r in rows})
        tags = {"data.holdout_queries": str(len(held)), "data.train_queries": str(trained)}
        return Corpus(name, rows, fields, split.files, self.max_length, tags=tags)
