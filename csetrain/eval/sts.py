"""STS evaluation that means what the papers mean.

Score = Spearman (×100) between gold scores and the cosine similarity of the two sentence
embeddings; no regressor, no truncation below the model's limit.

Protocols (the text each protocol feeds the encoder, and which pairs it counts):
- `senteval` (SimCSE's Table 5): STS12–16 as SentEval tokenizes them (Moses, lower-cased; the
  `sts-senteval/` folder), STS-B Moses-tokenized + lower-cased, SICK-R Moses-tokenized; every
  sentence whitespace-split and re-joined, as SentEval's batcher does. STS-B and SICK-R use the
  chosen split (test: 1,379 / 4,927 pairs).
- `mteb` (MTEB's STS tasks): the text MTEB's datasets hold — for STS12–16 that is SentEval's
  tokenized text (MTEB's character counts match `sts-senteval/` to 0.02%, the raw files differ
  by 2.5%), for STS-B and SICK-R the raw text; SICK-R's test set pools all 9,927 SICK pairs.
  MTEB feeds each sentence exactly as stored (no re-joining).

STS12–16 are scored in the "all" setting (one Spearman over a year's concatenated subsets, what
SimCSE reports), with "mean" and "wmean" (size-weighted mean) of per-subset scores beside it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from csetrain.config import ConfigError, CsetrainError, require_file, resolve_data_dir
from csetrain.data.sources import instruction_prefix
from csetrain.eval.pair_scores import PairScores, TaskPairs
from csetrain.modeling.prompts import encode_with_prompts, instructed

YEARS = ("sts12", "sts13", "sts14", "sts15", "sts16")
SPLIT_TASKS = ("stsb", "sickr")
PROTOCOLS = ("senteval", "mteb")


@dataclass
class PairSet:
    """Sentence pairs with gold scores, one subset of a task."""

    name: str
    first: list[str]
    second: list[str]
    gold: np.ndarray


@dataclass
class EvalResult:
    """Metrics keyed `<protocol>/<task>/<metric>`; `primary` is the selection number."""

    metrics: dict[str, float]
    primary: float
    primary_key: str
    details: dict = field(default_factory=dict)
    pairs: PairScores | None = None  # per-pair cosines, for paired/seed bootstraps

    def __post_init__(self) -> None:
        """A NaN or infinite score is never a result: it is refused here, by every evaluator."""
        for key, value in self.metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise CsetrainError(
                    f"evaluation gave {key}={value}: that task's cosines are constant (a collapsed "
                    "or broken model gives equal embeddings), so they have no correlation"
                )

    def prefixed(self, stage: str) -> dict[str, float]:
        return {f"{stage}/{k}": v for k, v in self.metrics.items()}


def read_pairs(path: Path, name: str) -> PairSet:
    """A `score<TAB>sentence1<TAB>sentence2` file (no quoting: 914 rows contain `"`); a UTF-8
    BOM and CRLF line ends are accepted, a gold score that is not a finite number is refused."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not valid UTF-8 ({err.reason}); re-encode the file as UTF-8"
        ) from None
    if not rows or rows[0][:1] != ["score"]:
        raise ConfigError(f"{path}: expected header 'score<TAB>sentence1<TAB>sentence2'")
    bad = [i + 1 for i, r in enumerate(rows) if len(r) != 3]
    if bad:
        raise ConfigError(f"{path}:{bad[0]}: expected 3 tab-separated fields; fix the file")
    body = rows[1:]
    gold = [gold_score(path, row, r[0]) for row, r in enumerate(body, start=2)]
    return PairSet(name, [r[1] for r in body], [r[2] for r in body], np.array(gold))


def gold_score(path: Path, row: int, text: str) -> float:
    """The gold score in row `row` of `path`; NaN or inf would make every correlation NaN."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None:
        raise ConfigError(f"{path}:{row}: score {text!r} is not a number; fix or delete the row")
    if not math.isfinite(value):
        raise ConfigError(f"{path}:{row}: score {text!r} is not finite; fix or delete the row")
    return value


@lru_cache(maxsize=1)
def _moses():
    from sacremoses import MosesTokenizer

    return MosesTokenizer(lang="en")


def senteval_text(sentence: str, lower: bool, tokenize: bool) -> str:
    """SentEval's text: Moses-tokenized (no escaping), optionally lower-cased, then whitespace
    split and re-joined with single spaces (its batcher's ' '.join(tokens))."""
    if tokenize:
        sentence = _moses().tokenize(sentence, escape=False, return_str=True)
    if lower:
        sentence = sentence.lower()
    return " ".join(sentence.split())


def _transform(pairs: PairSet, fn) -> PairSet:
    return PairSet(
        pairs.name, [fn(s) for s in pairs.first], [fn(s) for s in pairs.second], pairs.gold
    )


def _texts(subsets: list[PairSet]) -> list[str]:
    return [s for p in subsets for s in p.first + p.second]


def load_task(root: Path, task: str, split: str, protocol: str) -> list[PairSet]:
    """The subsets of one task as the protocol feeds them."""
    if task in YEARS:
        if split != "test":
            raise ConfigError(f"eval.tasks: {task} has only a test split (eval.split={split})")
        folder = root / "sts-senteval" / task  # both protocols: see the module docstring
        files = sorted(folder.glob("*.tsv"))
        if not files:
            raise ConfigError(
                f"no {task} files in {folder}: the data directory (paths.data_dir / $CSETRAIN_DATA_DIR) must hold {folder.parent.name}/{task}/*.tsv"
            )
        subsets = [read_pairs(f, f.stem) for f in files]
        if protocol == "senteval":
            return [_transform(s, lambda x: " ".join(x.split())) for s in subsets]
        return subsets
    if task not in SPLIT_TASKS:
        raise ConfigError(
            f"eval.tasks: unknown task '{task}'; choose from {list(YEARS + SPLIT_TASKS)}"
        )
    pooled = task == "sickr" and protocol == "mteb" and split == "test"  # MTEB's SICK-R
    splits = ["train", "dev", "test"] if pooled else [split]
    subsets = [
        read_pairs(
            require_file(root / "sts" / task / f"{s}.tsv", f"{task} {s} split", "paths.data_dir"), s
        )
        for s in splits
    ]
    if protocol == "senteval":  # SentEval lower-cases STS-B but not SICK
        return [
            _transform(s, lambda x: senteval_text(x, lower=task == "stsb", tokenize=True))
            for s in subsets
        ]
    return subsets


def correlations(pred: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    """(Spearman, Pearson) ×100."""
    return 100 * float(spearmanr(pred, gold).statistic), 100 * float(pearsonr(pred, gold).statistic)


def score_task(subsets: list[PairSet], sims: list[np.ndarray]) -> dict[str, float]:
    """'all' over the pooled pairs; 'mean'/'wmean' over subsets (for multi-subset tasks)."""
    spearman_all, pearson_all = correlations(
        np.concatenate(sims), np.concatenate([s.gold for s in subsets])
    )
    if len(subsets) == 1 or subsets[0].name in ("train", "dev", "test"):
        return {"spearman": spearman_all, "pearson": pearson_all}
    per = [correlations(sim, s.gold)[0] for s, sim in zip(subsets, sims)]
    sizes = np.array([len(s.gold) for s in subsets], dtype=float)
    return {
        "spearman_all": spearman_all,
        "pearson_all": pearson_all,
        "spearman_mean": float(np.mean(per)),
        "spearman_wmean": float(np.dot(per, sizes) / sizes.sum()),
        **{f"spearman_{s.name}": p for s, p in zip(subsets, per)},
    }


def main_metric(scores: dict[str, float]) -> float:
    return scores.get("spearman_all", scores.get("spearman"))


class STSEvaluator:
    """Scores an encoder on a list of STS tasks under one protocol.

    `name` is the task label used in metric keys (defaults to the task, plus `_dev` on dev).
    Data is read once per evaluator; each distinct sentence is encoded once per call.
    `diagnostics`: also measure alignment/uniformity/anisotropy/length bias on the first task's
    pairs from the same vectors (`diagnostics/<name>` metrics; csetrain/eval/diagnostics.py).
    `compare_initial`: read by training, which also scores the start checkpoint with this
    evaluator (cached by weights hash) for the before/after plot; the evaluator ignores it.
    `instructions`: {task: task definition}; both sentences of that task's pairs are prefixed
    with NV-Embed's "Instruct: {definition}\nQuery: " (data/sources.py), their prompt; the other
    tasks get the model's prompt `prompt_name` (null: its default; modeling/prompts.py).
    """

    def __init__(
        self,
        tasks: list[str],
        split: str = "test",
        protocol: str = "senteval",
        data_dir: str | None = None,
        batch_size: int = 128,
        progress: bool = False,
        diagnostics: bool = False,
        compare_initial: bool = False,
        instructions: dict[str, str] | None = None,
        prompt_name: str | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"eval.protocol='{protocol}' is unknown: choose senteval or mteb")
        if split not in ("dev", "test"):
            raise ConfigError(
                f"eval.split='{split}': choose dev or test (training data is never an eval split)"
            )
        self.tasks, self.split, self.protocol = list(tasks), split, protocol
        self.batch_size, self.progress, self.prompt_name = batch_size, progress, prompt_name
        root = resolve_data_dir(data_dir)
        self.data = {t: load_task(root, t, split, protocol) for t in self.tasks}
        self.prompt_of: dict[str, str] = {}
        for task, definition in (instructions or {}).items():  # NV-Embed: both sentences
            if task not in self.data:
                raise ConfigError(f"eval.instructions: '{task}' is not in eval.tasks {self.tasks}")
            self.data[task], prompts = instructed(self.data[task], instruction_prefix(definition))
            self.prompt_of.update(prompts)  # instructed sentence -> its prefix (its prompt)
        self.compare_initial = compare_initial
        self.diagnostics = None
        if diagnostics:  # imported here: diagnostics.py reads its data through this module
            from csetrain.eval.diagnostics import Diagnostics, pooled

            self.diagnostics = Diagnostics(pooled(self.data[self.tasks[0]]))

    def label(self, task: str) -> str:
        return task if self.split == "test" else f"{task}_{self.split}"

    def sentences(self) -> list[str]:
        return list(dict.fromkeys(s for subsets in self.data.values() for s in _texts(subsets)))

    def encode(self, encoder, unique: list[str], embed=None) -> torch.Tensor:
        """Vectors of `unique`, each sentence with its prompt (instruction, eval.prompt_name)."""
        args = (self.prompt_name, self.batch_size, self.progress, embed)
        return encode_with_prompts(encoder, unique, self.prompt_of, *args)

    def __call__(self, encoder) -> EvalResult:
        unique = self.sentences()
        vectors = self.encode(encoder, unique)
        result = self.score(unique, vectors)
        if self.diagnostics is not None:
            result.metrics.update(self.diagnostics.measure(unique, vectors))
        return result

    def score(self, unique: list[str], vectors: torch.Tensor) -> EvalResult:
        """Scores from `vectors[i]`, the embedding of `unique[i]` (e.g. one cell of a grid)."""
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
        index = {s: i for i, s in enumerate(unique)}
        metrics, details = {}, {"protocol": self.protocol, "split": self.split, "pairs": {}}
        mains, pairs = [], PairScores(self.protocol, self.split, {})
        for task, subsets in self.data.items():
            sims = [
                (vectors[[index[s] for s in p.first]] * vectors[[index[s] for s in p.second]])
                .sum(-1)
                .numpy()
                for p in subsets
            ]
            scores = score_task(subsets, sims)
            label = self.label(task)
            metrics.update({f"{self.protocol}/{label}/{k}": v for k, v in scores.items()})
            details["pairs"][label] = sum(len(p.gold) for p in subsets)
            mains.append(main_metric(scores))
            main = "spearman_all" if "spearman_all" in scores else "spearman"
            pairs.tasks[label] = TaskPairs(
                f"{self.protocol}/{label}/{main}",
                np.concatenate(sims),
                np.concatenate([p.gold for p in subsets]),
                [p.name for p in subsets],
                [len(p.gold) for p in subsets],
            )
        if len(self.data) > 1:
            metrics[f"{self.protocol}/avg/spearman"] = float(np.mean(mains))
        first = self.label(self.tasks[0])
        key = f"{self.protocol}/{first}/" + (
            "spearman_all" if self.tasks[0] in YEARS else "spearman"
        )
        return EvalResult(metrics, metrics[key], key, details, pairs)
