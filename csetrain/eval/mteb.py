"""MTEB's own evaluators on csetrain encoders, fully offline. With mteb_encoder.py (the encoder
adapter), the only module that imports mteb.

`MTEBEvaluator` has `STSEvaluator`'s call contract (`evaluator(encoder) -> EvalResult`), but the
scores come from mteb itself: its task classes, its STS evaluator, its correlation code. Nothing
is read from a hub: the data of each task is injected into the mteb task object
(`task.dataset`, `task.data_loaded = True`, which mteb then treats as loaded), either from the
data pack

- STS12–16: `sts-senteval/<year>/*.tsv` concatenated (MTEB's datasets hold SentEval's tokenized
  text; see csetrain/eval/sts.py),
- STSBenchmark: `sts/stsb/test.tsv` (1,379 pairs),
- SICK-R: `sts/sickr/{train,dev,test}.tsv` (MTEB pools all 9,927 pairs),

or, for any other task, from a local folder written by `datasets`' `save_to_disk` (what
`load_dataset(**task.metadata.dataset)` returns, saved on a connected machine; a multilingual
task's folder holds one such folder per hf_subset), mapped in `local_tasks: {TaskName: folder}`.
mteb's `dataset_transform` then runs on it as after a download. Tasks with their own loaders
(retrieval, reranking) do not go through `load_dataset` and are not supported this way.

Caching: by default no result cache at all (mteb's "only missing" cache would return a stale
score for a retrained checkpoint under the same name). With `cache_dir`, results are cached
under a model name/revision derived from the encoder's weights and inference settings, so two
checkpoints never share a cached score. mteb writes the hub dataset revision into its results
even for injected data, so `details` records our own provenance (files and sha256).
"""

from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csetrain.config import ConfigError, resolve_data_dir
from csetrain.data.sources import sha256_file
from csetrain.eval.mteb_encoder import MTEBEncoder
from csetrain.eval.sts import EvalResult, read_pairs

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
INSTALL_HINT = "eval=mteb needs the mteb extra: pip install 'csetrain[mteb]'"


def _mteb():
    """Import mteb on first use (it takes seconds, and it is an optional extra)."""
    try:
        import mteb
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return mteb


# ---------------------------------------------------------------------------------------------
# The data side: our files, injected into mteb's task objects.


@dataclass
class TaskData:
    """What one task is scored on: STS columns or a local datasets folder, plus provenance."""

    columns: dict[str, list] | None  # sentence1/sentence2/score, for the data-pack STS tasks
    folder: Path | None  # a save_to_disk folder, for local_tasks
    files: dict[str, str]  # file (relative to its root) -> sha256


def _sts_data(root: Path, task: str) -> TaskData:
    """A data-pack STS task: every matching file read with `read_pairs`, concatenated."""
    paths = [p for pattern in STS_FILES[task] for p in sorted(root.glob(pattern))]
    missing = [pat for pat in STS_FILES[task] if not any(root.glob(pat))]
    if missing:
        raise ConfigError(
            f"MTEB task {task} needs {root / missing[0]}: fix paths.data_dir / $CSETRAIN_DATA_DIR"
        )
    pairs = [read_pairs(p, p.stem) for p in paths]
    columns = {
        "sentence1": [s for p in pairs for s in p.first],
        "sentence2": [s for p in pairs for s in p.second],
        "score": np.concatenate([p.gold for p in pairs]).tolist(),
    }
    return TaskData(columns, None, {str(p.relative_to(root)): sha256_file(p) for p in paths})


def _local_data(task: str, folder: str) -> TaskData:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"eval.local_tasks.{task}={folder}: no such folder; point it at a datasets save_to_disk folder"
        )
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return TaskData(None, path, {str(p.relative_to(path)): sha256_file(p) for p in files})


def mteb_task(name: str, data: TaskData):
    """mteb's own task object for `name`, with our data injected (no hub access)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        task = _mteb().get_task(name)
    except KeyError:
        raise ConfigError(
            f"eval.tasks: '{name}' is not an MTEB task name (see mteb.get_tasks())"
        ) from None
    if data.columns is not None:
        task.dataset = {"default": DatasetDict({"test": Dataset.from_dict(data.columns)})}
    else:  # exactly what load_data would have loaded, then mteb's own post-processing
        subsets = task.hf_subsets if task.metadata.is_multilingual else [None]
        task.dataset = {
            s: load_from_disk(str(data.folder / s if s else data.folder)) for s in subsets
        }
        if None in task.dataset:
            task.dataset = task.dataset[None]
        task.dataset_transform()
    task.data_loaded = True
    return task


# ---------------------------------------------------------------------------------------------
# The evaluator.


def _label(task: str, split: str, subset: str) -> str:
    """`STS12`; other splits/subsets than MTEB's usual `test`/`default` are appended with dots."""
    extra = [s for s, usual in ((subset, "default"), (split, "test")) if s != usual]
    return ".".join([task, *extra])


def _percent(scores: dict) -> dict[str, float]:
    """mteb's numeric scores ×100; `main_score` is dropped (a copy of the metric it names)."""
    return {
        k: 100 * float(v)
        for k, v in scores.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "main_score"
    }


def task_metrics(task_result, main: str) -> dict[str, float]:
    """One task's metrics, ×100. A task scored on several subsets/splits also gets
    `mteb/<Task>/<main>` = their mean, as MTEB's tables aggregate it."""
    name, metrics, mains = task_result.task_name, {}, []
    for split, entries in task_result.scores.items():
        for entry in entries:
            label = _label(name, split, entry["hf_subset"])
            metrics.update({f"mteb/{label}/{k}": v for k, v in _percent(entry).items()})
            mains.append(100 * float(entry["main_score"]))
    metrics.setdefault(f"mteb/{name}/{main}", float(np.mean(mains)))
    return metrics


class MTEBEvaluator:
    """Scores an encoder on MTEB tasks with mteb's own evaluators, offline.

    Metrics are keyed `mteb/<TaskName>/<metric>` (e.g. `mteb/STS12/cosine_spearman`) and, like
    every csetrain score, are ×100 (mteb itself reports fractions). Every numeric score mteb
    returns is kept; `primary` is the first task's main score (cosine_spearman for STS tasks),
    `mteb/avg/<main score>` the mean over tasks when they share one. `details` holds mteb's raw
    per-task scores, the model name/revision it saw, the mteb version and our data provenance.
    """

    protocol = "mteb"
    split = "test"

    def __init__(
        self,
        tasks: list[str],
        data_dir: str | None = None,
        local_tasks: dict[str, str] | None = None,
        batch_size: int = 128,
        progress: bool = False,
        cache_dir: str | None = None,
        protocol: str = "mteb",
    ) -> None:
        if protocol != "mteb":
            raise ConfigError(
                f"eval.protocol='{protocol}': the mteb evaluator only scores MTEB's protocol; use eval=sts7 for senteval"
            )
        local_tasks = dict(local_tasks or {})
        unknown = [t for t in tasks if t not in STS_FILES and t not in local_tasks]
        if unknown:
            raise ConfigError(
                f"eval.tasks: no offline data for MTEB task '{unknown[0]}'; choose from "
                f"{list(STS_FILES)} or add eval.local_tasks.{unknown[0]}=/path/to/save_to_disk/folder"
            )
        self.tasks, self.batch_size, self.progress = list(tasks), batch_size, progress
        self.cache_dir = cache_dir
        root = resolve_data_dir(data_dir) if any(t not in local_tasks for t in tasks) else None
        # Read (and checksum) everything now, so data errors surface before a model is loaded.
        self.data = {
            t: _local_data(t, local_tasks[t]) if t in local_tasks else _sts_data(root, t)
            for t in self.tasks
        }

    def label(self, task: str) -> str:
        return task

    def run(self, encoder):
        """mteb.evaluate on our injected tasks -> (mteb's ModelResult, the adapter, main scores)."""
        mteb = _mteb()
        from mteb.cache import ResultCache  # (mteb.ResultCache only in later 2.x releases)

        model = MTEBEncoder(encoder, self.batch_size, self.progress)
        tasks = [mteb_task(t, self.data[t]) for t in self.tasks]
        cache = ResultCache(self.cache_dir) if self.cache_dir else None
        with warnings.catch_warnings():
            # STSBenchmark is "superseded" by a deduplicated v2; v1 is what MTEB's tables report.
            warnings.filterwarnings("ignore", message=".*superseded.*")
            result = mteb.evaluate(
                model,
                tasks,
                cache=cache,
                overwrite_strategy="only-missing",
                co2_tracker=False,
                show_progress_bar=self.progress,
                encode_kwargs={"batch_size": self.batch_size},
            )
        return result, model, {t.metadata.name: t.metadata.main_score for t in tasks}

    def __call__(self, encoder) -> EvalResult:
        result, model, main_scores = self.run(encoder)
        metrics, details = {}, self._details(model)
        for task_result in result.task_results:
            name = task_result.task_name
            metrics.update(task_metrics(task_result, main_scores[name]))
            details["tasks"][name].update(
                scores=task_result.scores,
                evaluation_time_s=task_result.evaluation_time,
                mteb_recorded_dataset_revision=task_result.dataset_revision,  # the hub's, not ours
            )
        mains = [metrics[f"mteb/{t}/{m}"] for t, m in main_scores.items()]
        if len(mains) > 1 and len(set(main_scores.values())) == 1:  # one metric: a fair average
            metrics[f"mteb/avg/{main_scores[self.tasks[0]]}"] = float(np.mean(mains))
        key = f"mteb/{self.tasks[0]}/{main_scores[self.tasks[0]]}"
        return EvalResult(metrics, metrics[key], key, details)

    def _details(self, model: MTEBEncoder) -> dict:
        meta = model.mteb_model_meta
        return {
            "protocol": "mteb",
            "split": "test",
            "pairs": {t: len(d.columns["score"]) for t, d in self.data.items() if d.columns},
            "mteb_version": importlib.metadata.version("mteb"),
            "model": {"name": meta.name, "revision": meta.revision},
            "tasks": {
                t: {"source": str(d.folder) if d.folder else "data pack", "files": d.files}
                for t, d in self.data.items()
            },
        }
