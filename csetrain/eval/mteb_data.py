"""The data of MTEB tasks from local files, in the shapes mteb 2.x's task objects hold once they
have loaded (`task.dataset`), so that mteb never reaches the Hugging Face hub.

Three kinds of folder, told apart by what they contain:

- BEIR retrieval (`corpus.jsonl[.gz]`, `queries.jsonl` or `queries_<split>.jsonl`,
  `qrels/<split>.tsv`): `{"default": {split: {"corpus", "queries", "relevant_docs",
  "top_ranked"}}}`, mteb's RetrievalSplitData (corpus rows `id`/`title`/`text`, queries
  `id`/`text`, qrels `{query id: {doc id: score}}`);
- JSON Lines splits (`<split>.jsonl`, or `<subset>/<split>.jsonl` for a multilingual task):
  `{subset: DatasetDict({split: Dataset})}` with the rows as they are (classification
  `text`/`label`, summarization `text`/`machine_summaries`/`human_summaries`/`relevance`, ...);
- a `datasets` `save_to_disk` folder (what `load_dataset(**task.metadata.dataset)` returned on a
  connected machine; one per hf_subset for a multilingual task): loaded by eval/mteb.py, which
  then runs the task's own `dataset_transform`, as after a download.

The data pack's STS tasks are read from their TSVs (`STS_FILES`), its other MTEB tasks from
`mteb/<Task>/` (`PACK_FOLDERS`). `max_rows` keeps the first N rows of every split (queries, for
retrieval: the corpus then keeps its first N documents plus every document they judge), for smoke
tests; scores on such slices are no benchmark numbers. Every file read is checksummed.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csetrain.config import ConfigError
from csetrain.data.sources import sha256_file
from csetrain.eval.sts import read_pairs

# MTEB task name -> our files, relative to the data directory (globs, concatenated in order).
STS_FILES: dict[str, tuple[str, ...]] = {
    "STS12": ("sts-senteval/sts12/*.tsv",),
    "STS13": ("sts-senteval/sts13/*.tsv",),
    "STS14": ("sts-senteval/sts14/*.tsv",),
    "STS15": ("sts-senteval/sts15/*.tsv",),
    "STS16": ("sts-senteval/sts16/*.tsv",),
    "STSBenchmark": ("sts/stsb/test.tsv",),
    "SICK-R": ("sts/sickr/train.tsv", "sts/sickr/dev.tsv", "sts/sickr/test.tsv"),
}
# The pack's other MTEB(eng, v1) tasks -> their folder under the data directory. Both SummEval
# tasks read one folder: v1 (`SummEval`, the leaderboard's number, with mteb#1156's bug) and
# `SummEvalSummarization.v2` (the corrected Spearman) differ only in the evaluator.
PACK_FOLDERS: dict[str, str] = {
    "AmazonCounterfactualClassification": "mteb/AmazonCounterfactualClassification",
    "Banking77Classification": "mteb/Banking77Classification",
    "EmotionClassification": "mteb/EmotionClassification",
    "SciFact": "mteb/SciFact",
    "SummEval": "mteb/SummEval",
    "SummEvalSummarization.v2": "mteb/SummEval",
}


@dataclass
class TaskData:
    """What one task is scored on and where it came from."""

    dataset: dict | None  # the object for task.dataset; None: a save_to_disk folder (`folder`)
    folder: Path | None
    files: dict[str, str]  # file (relative to its root) -> sha256
    rows: dict[str, int]  # "<subset>/<split>" (or "<split>/queries", ...) -> row count


def sts_data(root: Path, task: str, max_rows: int | None = None) -> TaskData:
    """A data-pack STS task: every matching file read with `read_pairs`, concatenated."""
    from datasets import Dataset, DatasetDict

    paths = [p for pattern in STS_FILES[task] for p in sorted(root.glob(pattern))]
    missing = [pat for pat in STS_FILES[task] if not any(root.glob(pat))]
    if missing:
        raise ConfigError(
            f"MTEB task {task} needs {root / missing[0]}: fix paths.data_dir / $CSETRAIN_DATA_DIR"
        )
    pairs = [read_pairs(p, p.stem) for p in paths]
    columns = {
        "sentence1": [s for p in pairs for s in p.first][:max_rows],
        "sentence2": [s for p in pairs for s in p.second][:max_rows],
        "score": np.concatenate([p.gold for p in pairs]).tolist()[:max_rows],
    }
    dataset = {"default": DatasetDict({"test": Dataset.from_dict(columns)})}
    files = {str(p.relative_to(root)): sha256_file(p) for p in paths}
    return TaskData(dataset, None, files, {"default/test": len(columns["score"])})


def folder_data(task: str, folder: Path, key: str, max_rows: int | None = None) -> TaskData:
    """Any task's local folder (BEIR, JSON Lines splits or save_to_disk); `key` names the
    setting that pointed here, for the error message."""
    if not folder.is_dir():
        raise ConfigError(
            f"{key}={folder}: no such folder; point it at a BEIR folder, JSON Lines splits or a "
            "datasets save_to_disk folder"
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md")
    hashes = {str(p.relative_to(folder)): sha256_file(p) for p in files}
    if any(folder.glob("corpus.jsonl*")):
        dataset, rows = _beir(folder, max_rows)
    elif jsonl := _jsonl_splits(folder):
        dataset, rows = _jsonl_dataset(jsonl, max_rows)
    else:
        return TaskData(None, folder, hashes, {})
    return TaskData(dataset, folder, hashes, rows)


def _read_jsonl(path: Path, max_rows: int | None = None) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if max_rows is not None and len(rows) >= max_rows:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _jsonl_splits(folder: Path) -> dict[str, dict[str, Path]]:
    """{subset: {split: file}}: `<split>.jsonl` is subset "default", `<sub>/<split>.jsonl` <sub>."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.glob("*.jsonl")) + sorted(folder.glob("*/*.jsonl")):
        subset = "default" if path.parent == folder else path.parent.name
        found.setdefault(subset, {})[path.stem] = path
    return found


def _jsonl_dataset(splits: dict[str, dict[str, Path]], max_rows: int | None):
    from datasets import Dataset, DatasetDict

    dataset, rows = {}, {}
    for subset, files in splits.items():
        parts = {split: Dataset.from_list(_read_jsonl(p, max_rows)) for split, p in files.items()}
        dataset[subset] = DatasetDict(parts)
        rows.update({f"{subset}/{split}": len(d) for split, d in parts.items()})
    return dataset, rows


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels: `query-id<TAB>corpus-id<TAB>score` after a header line."""
    judged: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as lines:
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader, None)
        for query, doc, score in reader:
            judged.setdefault(query, {})[doc] = int(score)
    return judged


def _beir(folder: Path, max_rows: int | None):
    """Every split that has a qrels file, in mteb's RetrievalSplitData shape."""
    from datasets import Dataset

    (corpus_file,) = sorted(folder.glob("corpus.jsonl*"))[:1]
    corpus = _read_jsonl(corpus_file)
    splits, rows = {}, {}
    for qrels_file in sorted((folder / "qrels").glob("*.tsv")):
        split = qrels_file.stem
        queries_file = folder / f"queries_{split}.jsonl"
        queries_file = queries_file if queries_file.is_file() else folder / "queries.jsonl"
        judged = _qrels(qrels_file)
        queries = [q for q in _read_jsonl(queries_file) if str(q["_id"]) in judged][:max_rows]
        judged = {str(q["_id"]): judged[str(q["_id"])] for q in queries}
        docs = corpus
        if max_rows is not None:
            wanted = {d for relevant in judged.values() for d in relevant}
            docs = [d for i, d in enumerate(corpus) if i < max_rows or str(d["_id"]) in wanted]
        splits[split] = {
            "corpus": Dataset.from_dict(
                {
                    "id": [str(d["_id"]) for d in docs],
                    "title": [d.get("title", "") for d in docs],
                    "text": [d["text"] for d in docs],
                }
            ),
            "queries": Dataset.from_dict(
                {"id": [str(q["_id"]) for q in queries], "text": [q["text"] for q in queries]}
            ),
            "relevant_docs": judged,
            "top_ranked": None,
        }
        rows.update({f"{split}/corpus": len(docs), f"{split}/queries": len(queries)})
    return {"default": splits}, rows


# all-MiniLM-L6-v2's published STS main scores x100 (embeddings-benchmark/results, mteb 1.12.75;
# REFERENCE §3.2): three decimals where they are quoted, else the table's two. The pack has no
# JSON for these, nor for SummEval v2 (the statistic-only value quoted in mteb PR #1157).
PUBLISHED_MINILM_STS = {
    "STS12": 72.369,
    "STS13": 80.603,
    "STS14": 75.59,
    "STS15": 85.390,
    "STS16": 78.989,
    "STSBenchmark": 82.032,
    "SICK-R": 77.582,
}
PUBLISHED_MINILM_SUMMEVAL_V2 = 25.9711


def published_minilm_scores(data_dir: Path) -> dict[str, float]:
    """MiniLM's published main scores x100 for every task of the pack (test split;
    AmazonCounterfactual: subset en): the STS table above plus the pack's result JSONs."""
    scores = dict(
        PUBLISHED_MINILM_STS, **{"SummEvalSummarization.v2": PUBLISHED_MINILM_SUMMEVAL_V2}
    )
    for path in sorted((Path(data_dir) / "mteb" / "published-all-MiniLM-L6-v2").glob("*.json")):
        result = json.loads(path.read_text())
        entries = result["scores"]["test"]
        entry = next((e for e in entries if e["hf_subset"] in ("en", "default")), entries[0])
        scores[result["task_name"]] = 100 * entry["main_score"]
    return scores
