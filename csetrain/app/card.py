"""A run's model card record, read from the run's own records: its MLflow run (params, tags,
metrics, the start checkpoint's scores artifact), its sweep parent's seed statistics, the
exported folder's prompts. csetrain/modeling/model_card.py renders it."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import tempfile
from pathlib import Path

from csetrain.app.store.queries import download_artifact, read_run
from csetrain.app.store.tracker import flatten
from csetrain.modeling.model_card import TEST_KEY, CardRecord, DataFile, TaskScore

START_FILE = "initial_eval.json"  # csetrain/app/reports/plots.py's START_FILE
ARXIV = re.compile(r"arXiv[: ]?(\d{4}\.\d{4,5})")
# Licences of the data files csetrain's options read (the data pack's README and
# csetrain/assets/sample/ATTRIBUTION.md); a user's own files are theirs to state.
LICENCES = {
    "wiki/wiki_sample.txt": "CC BY-SA (English Wikipedia text)",
    "wiki/wiki1m_head.txt": "CC BY-SA (English Wikipedia text)",
    "wiki/wiki1m_supergen_sample.txt": "CC BY-SA (English Wikipedia text)",
    "wiki1m_for_simcse.txt": "CC BY-SA (English Wikipedia text)",
    "wiki/wikitext2_sample.txt": "CC BY-SA 3.0",
    "wiki/wikitext2_test.txt": "CC BY-SA 3.0",
    "wiki/wikisplit.txt": "CC BY-SA 4.0",
    "wiki/wikiqa.txt": "Microsoft Research Data License Agreement (non-commercial research)",
    "nli/snli_sample.csv": "CC BY-SA 4.0",
    "nli/snli_devtest_triplets.csv": "CC BY-SA 4.0",
    "sts/stsb/train.tsv": "scores CC BY-SA 4.0; sentences keep their sources' licences",
}
UNKNOWN_LICENCE = "not recorded: state your data's licence"
# Settings that locate things or show progress, not hyperparameters of the model.
NOT_HYPERPARAMETERS = ("paths.", "tracking.", "hydra.")
NOT_HYPERPARAMETER_LEAVES = ("data_dir", "progress", "cache_dir", "batch_size_eval")


def option_defaults(tags: dict[str, str]) -> dict[str, str]:
    """The flattened config the run's group choices compose to with no key overrides."""
    from csetrain.app.compose import compose
    from csetrain.app.settings import plain

    overrides = []
    for key, value in tags.items():
        if key.startswith("choice.") and value not in ("None", "null", "[]"):
            group = key.removeprefix("choice.").replace("/", "@", 1)  # store_key's '@' -> '/'
            overrides.append(f"{group}={value}")
    return flatten(plain(compose("train", overrides)))


def changed_hyperparameters(params: dict[str, str], tags: dict[str, str]):
    """{key: (run value, the options' default)} for every hyperparameter the run changed."""
    defaults = option_defaults(tags)
    changed = {}
    for key, value in params.items():
        leaf = key.rsplit(".", 1)[-1]
        if key.startswith(NOT_HYPERPARAMETERS) or leaf in NOT_HYPERPARAMETER_LEAVES:
            continue
        if key in defaults and defaults[key] != value:
            changed[key] = (value, defaults[key])
    return changed


def paper_of(target: str) -> str:
    """The arXiv id the objective's module cites first ("" if none or not importable)."""
    try:
        doc = importlib.import_module(target.rsplit(".", 1)[0]).__doc__ or ""
    except ImportError:
        return ""
    found = ARXIV.search(doc)
    return f"arXiv:{found[1]}" if found else ""


def start_scores(uri: str, run: dict) -> dict[str, float]:
    """The start checkpoint's test metrics: the run's artifact, else its run dir's file."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
    with tempfile.TemporaryDirectory() as tmp:
        path = download_artifact(uri, run["id"], START_FILE, Path(tmp))
        if path is not None and path.is_file():
            return json.loads(path.read_text())["metrics"]
    local = Path(run["tags"].get("run_dir", "")) / START_FILE
    return json.loads(local.read_text())["metrics"] if local.is_file() else {}


def seed_statistics(uri: str, tags: dict[str, str]) -> tuple[dict, int]:
    """({metric: {mean, std, ci_low, ci_high}}, seeds) from the sweep parent, if it has them."""
    parent = tags.get("mlflow.parentRunId")
    if not parent:
        return {}, 0
    metrics = read_run(uri, parent)["metrics"]
    stats: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("seeds/") and key.count("/") >= 2:
            metric, name = key.removeprefix("seeds/").rsplit("/", 1)
            stats.setdefault(metric, {})[name] = value
    return stats, int(metrics.get("seeds/n", 0))


def _revision(source: str, params: dict[str, str]) -> str:
    if "==" in source:  # a packaged model: the package version pins the weights
        return f"package version {source.split('==', 1)[1]}"
    return params.get("model.backbone.revision", "not recorded (a local folder or the hub's main)")


def _data_files(tags: dict[str, str]) -> list[DataFile]:
    prefix = "data.sha256."
    return [
        DataFile(
            key.removeprefix(prefix), value, LICENCES.get(key.removeprefix(prefix), UNKNOWN_LICENCE)
        )
        for key, value in sorted(tags.items())
        if key.startswith(prefix)
    ]


def _version() -> str:
    try:
        return importlib.metadata.version("csetrain")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def card_record(uri: str, run: dict, folder: Path, export: dict[str, str]) -> CardRecord:
    """Everything the card says, from the run's records and the exported folder's config."""
    params, tags, metrics = run["params"], run["tags"], run["metrics"]
    start = start_scores(uri, run)
    tests = [
        TaskScore(key, value, start.get(key))
        for key, value in sorted(metrics.items())
        if TEST_KEY.match(key)
    ]
    seeds, seed_count = seed_statistics(uri, tags)
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    info = json.loads((folder / "csetrain.json").read_text())
    target = params.get("objective._target_", "")
    return CardRecord(
        run_id=run["id"],
        run_name=f"csetrain-{tags.get('choice.objective', 'model')}-{run['id'][:8]}",
        run_label=run["name"] or "",
        base_model=tags.get("model.source", params.get("model.backbone._target_", "")),
        base_revision=_revision(tags.get("model.source", ""), params),
        objective=tags.get("choice.objective", target.rsplit(".", 1)[-1]),
        objective_class=target,
        paper=paper_of(target),
        changed=changed_hyperparameters(params, tags),
        data_name=params.get("data.name", tags.get("choice.data", "")),
        data_rows=int(tags.get("data.sentences", 0)),
        data_files=_data_files(tags),
        selection_metric=info.get("selected_by", ""),
        selection_step=int(metrics.get("eval/best_step", info.get("step", -1))),
        selection_value=float(metrics.get("eval/best", info.get("value", float("nan")))),
        tests=tests,
        csetrain_version=_version(),
        git_sha=tags.get("git.sha", "unknown"),
        git_dirty=tags.get("git.dirty") == "true",
        seeds=seeds,
        seed_count=seed_count,
        prompts=dict(settings.get("prompts") or {}),
        default_prompt_name=settings.get("default_prompt_name"),
        export=export,
        extra_scores={k: v for k, v in metrics.items() if k.startswith("export/")},
    )
