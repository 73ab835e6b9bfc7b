"""MTEB's own evaluators on csetrain encoders, fully offline. With mteb_encoder.py (the encoder
adapter), the only module that imports mteb; mteb_data.py reads the files.

`MTEBEvaluator` has `STSEvaluator`'s call contract (`evaluator(encoder) -> EvalResult`), but the
scores come from mteb itself: its task classes and its STS, classification, retrieval and
summarization evaluators. Nothing is read from a hub: each task's data is injected into mteb's
task object (`task.dataset`, `task.data_loaded = True`, which mteb then treats as loaded) from
the data pack (STS_FILES, PACK_FOLDERS) or from `local_tasks: {TaskName: folder}` (a BEIR
folder, JSON Lines splits, or a `datasets` save_to_disk folder, on which mteb's own
`dataset_transform` then runs as after a download).

Task definitions are MTEB(eng, v1)'s, the leaderboard's: a task in that benchmark gets its
splits and subsets (AmazonCounterfactual: `en`, test only), any other task mteb's defaults, both
cut to the splits the data has.

Caching: by default no result cache at all (mteb's "only missing" cache would return a stale
score for a retrained checkpoint under the same name). With `cache_dir`, results are cached
under a model name/revision derived from the encoder's weights and inference settings, so two
checkpoints never share a cached score. With `output_dir`, every task's result is also written in
mteb's results layout, `<output_dir>/results/<model>/<revision>/<Task>.json` (+ model_meta.json),
the layout of the leaderboard's results repository. mteb writes the hub dataset revision into
its results even for injected data, so `details` records our own provenance (files and sha256).
"""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path

from csetrain.config import ConfigError, resolve_data_dir
from csetrain.eval.mteb_data import PACK_FOLDERS, STS_FILES, TaskData, folder_data, sts_data
from csetrain.eval.mteb_encoder import MTEBEncoder
from csetrain.eval.mteb_summary import summary, task_metrics
from csetrain.eval.sts import EvalResult

INSTALL_HINT = "eval=mteb needs the mteb extra: pip install 'csetrain[mteb]'"


def _mteb():
    """Import mteb on first use (it takes seconds, and it is an optional extra)."""
    try:
        import mteb
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return mteb


# MTEB(eng, v1)'s splits and subsets (mteb/benchmarks/benchmarks.py, MTEB_ENG_CLASSIC: every
# task on `test`, these four narrowed further) for the tasks this module knows. Building the
# benchmark itself constructs every task mteb has (~20 s), so the definition is copied here and
# a slow test checks it against mteb's.
V1_NARROWED = {
    "AmazonCounterfactualClassification": {"eval_splits": ["test"], "hf_subsets": ["en"]},
    "STS17": {"eval_splits": ["test"], "hf_subsets": ["en-en"]},
    "STS22": {"eval_splits": ["test"], "hf_subsets": ["en"]},
    "MSMARCO": {"eval_splits": ["dev"]},
}
V1_TASKS = [*STS_FILES, *(t for t in PACK_FOLDERS if t != "SummEvalSummarization.v2")]


def leaderboard_filters() -> dict[str, dict]:
    """MTEB(eng, v1)'s splits and subsets for the data pack's tasks and the narrowed ones."""
    return {t: {"eval_splits": ["test"]} for t in V1_TASKS} | V1_NARROWED


def _available(data: TaskData) -> tuple[set[str], set[str]]:
    """The (subsets, splits) the injected data holds."""
    splits = {split for value in data.dataset.values() for split in value}
    return set(data.dataset), splits


def task_filters(name: str, data: TaskData, leaderboard: dict[str, dict]) -> dict:
    """get_task's filters: the leaderboard's splits/subsets, cut to those the data holds."""
    mteb = _mteb()
    filters = {k: list(v) for k, v in leaderboard.get(name, {}).items()}
    try:
        task = mteb.get_task(name, eval_splits=filters.get("eval_splits"))
    except KeyError:
        raise ConfigError(
            f"eval.tasks: '{name}' is not an MTEB task name (see mteb.get_tasks())"
        ) from None
    if not task.metadata.is_multilingual:
        filters.pop("hf_subsets", None)
    if data.dataset is None:  # a save_to_disk folder: load_data's own shape, all it holds
        return filters
    subsets, splits = _available(data)
    filters["eval_splits"] = [s for s in task.eval_splits if s in splits]
    if not filters["eval_splits"]:
        raise ConfigError(
            f"MTEB task {name} is scored on {list(task.eval_splits)}; its data has {sorted(splits)}"
        )
    if task.metadata.is_multilingual:
        wanted = filters.get("hf_subsets") or task.hf_subsets
        filters["hf_subsets"] = [s for s in wanted if s in subsets]
    return filters


def mteb_task(name: str, data: TaskData, leaderboard: dict[str, dict] | None = None):
    """mteb's own task object for `name`, with our data injected (no hub access)."""
    from datasets import load_from_disk

    task = _mteb().get_task(name, **task_filters(name, data, leaderboard or {}))
    if data.dataset is not None:
        task.dataset = data.dataset
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


def with_array_columns(task):
    """`task` with its classification datasets formatted as pandas, so that column reads return
    whole arrays (same values, same scores; tests/test_mteb_data.py).

    Why: with `datasets` >= 4, `ds["label"]` is a lazy `Column` that converts row by row through
    the Python formatter. mteb's classification evaluator reads its label columns per row while
    undersampling and whole in every sklearn metric, 10 experiments over: on the pack's three
    classification tasks that took ~35 s, more than encoding their texts (a profile with instant
    embeddings). A pandas-formatted `ds["label"]` is a Series, read at numpy speed. Other task
    types do arithmetic on their rows, so they keep the default format.
    """
    from datasets import DatasetDict

    if task.metadata.type != "Classification":
        return task
    if isinstance(task.dataset, DatasetDict):  # a save_to_disk folder without subsets
        task.dataset = task.dataset.with_format("pandas")
    else:
        task.dataset = {s: d.with_format("pandas") for s, d in task.dataset.items()}
    return task


# ---------------------------------------------------------------------------------------------
# The evaluator.

DEFAULT_TASKS = [*STS_FILES, *PACK_FOLDERS]


class MTEBEvaluator:
    """Scores an encoder on MTEB tasks with mteb's own evaluators, offline.

    Metrics are keyed `mteb/<TaskName>/<metric>` (e.g. `mteb/STS12/cosine_spearman`) and, like
    every csetrain score, are ×100 (mteb itself reports fractions). Every numeric score mteb
    returns is kept; besides, `mteb/<Task>/main_score`, `mteb/type/<Type>` (mean of that type's
    main scores) and `mteb/avg/main_score` (mean over tasks) summarise the run as the
    leaderboard does; `mteb/avg/<metric>` is the mean when all tasks share one main metric.
    `primary` is the mean over tasks (one task: its main score). `details` holds mteb's raw
    per-task scores, a protocol label per task (`summary`), the model name/revision it saw, the
    mteb version and our data provenance.
    """

    protocol = "mteb"
    split = "test"

    def __init__(
        self,
        tasks: list[str] | None = None,
        data_dir: str | None = None,
        local_tasks: dict[str, str] | None = None,
        batch_size: int = 128,
        progress: bool = False,
        cache_dir: str | None = None,
        protocol: str = "mteb",
        output_dir: str | None = None,
        max_rows: int | None = None,
    ) -> None:
        if protocol != "mteb":
            raise ConfigError(
                f"eval.protocol='{protocol}': the mteb evaluator only scores MTEB's protocol; use eval=sts7 for senteval"
            )
        tasks = list(DEFAULT_TASKS if tasks is None else tasks)
        local_tasks = dict(local_tasks or {})
        unknown = [t for t in tasks if t not in STS_FILES | PACK_FOLDERS and t not in local_tasks]
        if unknown:
            raise ConfigError(
                f"eval.tasks: no offline data for MTEB task '{unknown[0]}'; choose from "
                f"{DEFAULT_TASKS} or add eval.local_tasks.{unknown[0]}=/path/to/folder"
            )
        self.tasks, self.batch_size, self.progress = tasks, batch_size, progress
        self.cache_dir, self.output_dir, self.max_rows = cache_dir, output_dir, max_rows
        root = resolve_data_dir(data_dir) if any(t not in local_tasks for t in tasks) else None
        # Read (and checksum) everything now, so data errors surface before a model is loaded.
        self.data = {t: self._read(t, root, local_tasks) for t in tasks}

    def _read(self, task: str, root: Path | None, local_tasks: dict[str, str]) -> TaskData:
        if task in local_tasks:
            folder = Path(local_tasks[task]).expanduser()
            return folder_data(task, folder, f"eval.local_tasks.{task}", self.max_rows)
        if task in STS_FILES:
            return sts_data(root, task, self.max_rows)
        folder = root / PACK_FOLDERS[task]
        return folder_data(
            task, folder, f"{task}: paths.data_dir/{PACK_FOLDERS[task]}", self.max_rows
        )

    def label(self, task: str) -> str:
        return task

    def run(self, encoder):
        """mteb.evaluate on our injected tasks -> (mteb's ModelResult, the adapter, mteb tasks)."""
        mteb = _mteb()
        from mteb.cache import ResultCache  # (mteb.ResultCache only in later 2.x releases)

        model = MTEBEncoder(encoder, self.batch_size, self.progress)
        board = leaderboard_filters()
        tasks = [with_array_columns(mteb_task(t, self.data[t], board)) for t in self.tasks]
        cache = ResultCache(self.cache_dir) if self.cache_dir else None
        with warnings.catch_warnings():
            # v1 tasks are "superseded" by corrected v2s; v1 is what MTEB(eng, v1) reports.
            warnings.filterwarnings("ignore", message=".*superseded.*")
            # MTEB's classifier protocol is lbfgs with max_iter=100: it often stops unconverged.
            warnings.filterwarnings("ignore", message=".*failed to converge.*")
            result = mteb.evaluate(
                model,
                tasks,
                cache=cache,
                overwrite_strategy="only-missing",
                co2_tracker=False,
                show_progress_bar=self.progress,
                encode_kwargs={"batch_size": self.batch_size},
            )
        if self.output_dir:  # the leaderboard results repository's layout
            written = ResultCache(Path(self.output_dir) / "mteb")
            for task_result in result.task_results:
                written.save_to_cache(task_result, model.mteb_model_meta)
        return result, model, tasks

    def __call__(self, encoder) -> EvalResult:
        result, model, tasks = self.run(encoder)
        main_scores = {t.metadata.name: t.metadata.main_score for t in tasks}
        metrics, details = {}, self._details(model)
        for task_result in result.task_results:
            name = task_result.task_name
            metrics.update(task_metrics(task_result, main_scores[name]))
            details["tasks"][name].update(
                scores=task_result.scores,
                evaluation_time_s=task_result.evaluation_time,
                mteb_recorded_dataset_revision=task_result.dataset_revision,  # the hub's, not ours
            )
        means, details["summary"] = summary(
            tasks, metrics, details["mteb_version"], set(leaderboard_filters())
        )
        metrics.update(means)
        if len(set(main_scores.values())) == 1:  # one metric: its mean is a fair average too
            metrics[f"mteb/avg/{main_scores[self.tasks[0]]}"] = means["mteb/avg/main_score"]
        key = "mteb/avg/main_score"
        if len(self.tasks) == 1:
            key = f"mteb/{self.tasks[0]}/{main_scores[self.tasks[0]]}"
        return EvalResult(metrics, metrics[key], key, details)

    def _details(self, model: MTEBEncoder) -> dict:
        meta = model.mteb_model_meta
        return {
            "protocol": "mteb",
            "split": "test",
            "pairs": {t: d.rows["default/test"] for t, d in self.data.items() if t in STS_FILES},
            "rows": {t: d.rows for t, d in self.data.items()},
            "texts_encoded": len(model.memo),  # distinct texts, each encoded once
            "encode_s": model.encode_s,  # of the evaluation's wall time; the rest is scoring
            "max_rows": self.max_rows,  # not None: first-N-row slices, no benchmark numbers
            "mteb_version": importlib.metadata.version("mteb"),
            "model": {"name": meta.name, "revision": meta.revision},
            "tasks": {
                t: {"source": str(d.folder) if d.folder else "data pack", "files": d.files}
                for t, d in self.data.items()
            },
        }
