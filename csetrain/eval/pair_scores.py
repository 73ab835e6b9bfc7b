"""Per-pair similarities of an STS evaluation, saved beside its metrics (`pair_scores.npz`), so
two runs — or the seeds of one sweep — can later be compared pair by pair (csetrain/stats.py).

One compressed `.npz` per evaluation: for each task label, `<label>/sims` (the cosine of every
pair, exactly the float32 values the evaluator ranked) and `<label>/gold`, subsets concatenated
in file order (the order the "all" setting pools them), plus a JSON `meta` entry naming the
protocol, split, each task's subsets and sizes, and the metric key the Spearman of the arrays
reproduces (e.g. `senteval/sts12/spearman_all`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csetrain.config import ConfigError

FILE_NAME = "pair_scores.npz"
FORMAT_VERSION = 1


@dataclass
class TaskPairs:
    """One task's pairs: what its headline Spearman is computed over."""

    metric_key: str  # "<protocol>/<label>/<metric>", without the stage prefix
    sims: np.ndarray  # (N,) cosine per pair, subsets concatenated in file order
    gold: np.ndarray  # (N,) gold scores, same order
    subsets: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)


@dataclass
class PairScores:
    protocol: str
    split: str
    tasks: dict[str, TaskPairs]

    @property
    def avg_key(self) -> str:
        """The key STSEvaluator logs the mean of the task scores under."""
        return f"{self.protocol}/avg/spearman"


def save_pair_scores(scores: PairScores, path: Path) -> None:
    """Write atomically (a reader never sees half a file)."""
    meta = {
        "format": FORMAT_VERSION,
        "protocol": scores.protocol,
        "split": scores.split,
        "tasks": {
            label: {"metric_key": t.metric_key, "subsets": t.subsets, "sizes": t.sizes}
            for label, t in scores.tasks.items()
        },
    }
    arrays = {"meta": np.array(json.dumps(meta))}
    for label, t in scores.tasks.items():
        arrays[f"{label}/sims"], arrays[f"{label}/gold"] = t.sims, t.gold
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_pair_scores(path: Path) -> PairScores:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            tasks = {
                label: TaskPairs(
                    info["metric_key"],
                    data[f"{label}/sims"],
                    data[f"{label}/gold"],
                    list(info["subsets"]),
                    list(info["sizes"]),
                )
                for label, info in meta["tasks"].items()
            }
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(
            f"{path}: not a csetrain pair-scores file ({type(err).__name__}: {err}); "
            "it is written by the test evaluation as pair_scores.npz"
        ) from None
    return PairScores(meta["protocol"], meta["split"], tasks)
