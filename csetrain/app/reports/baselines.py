"""Published STS baselines (csetrain/assets/published_baselines.yaml) under our metric keys.

`reference_scores(protocol)` gives {label: {metric key: score}} with exactly the keys our test
evaluation logs, so a published number and a run's number share a column:
- senteval: `test/senteval/<task>/spearman_all` for STS12–16 ("all" setting),
  `test/senteval/{stsb,sickr}/spearman`, `test/senteval/avg/spearman` (what eval=sts7 logs);
- mteb: the same keys under `test/mteb/` (eval=sts7 eval.protocol=mteb), and also the keys of
  mteb's own evaluators, `test/mteb/<MTEB task>/cosine_spearman` and
  `test/mteb/avg/cosine_spearman` (eval=mteb), since MTEB publishes cos_sim Spearman.
`reference_runs()` shapes them for store/references.write_reference_runs (`csetrain runs baselines`).
"""

from __future__ import annotations

from functools import lru_cache

import yaml

from csetrain.config import ASSETS_DIR, ConfigError
from csetrain.eval.mteb import STS_FILES
from csetrain.eval.sts import PROTOCOLS, SPLIT_TASKS, YEARS

BASELINES_FILE = ASSETS_DIR / "published_baselines.yaml"
TASKS = (*YEARS, *SPLIT_TASKS)
# Our task name -> MTEB's: the mteb adapter lists the same seven tasks in the same order.
MTEB_NAMES = dict(zip(TASKS, STS_FILES, strict=True))


@lru_cache(maxsize=1)
def published() -> dict[str, list[dict]]:
    """The data file, checked: known protocols and tasks, numeric scores."""
    data = yaml.safe_load(BASELINES_FILE.read_text(encoding="utf-8"))
    for protocol, entries in data.items():
        if protocol not in PROTOCOLS:
            raise ConfigError(f"{BASELINES_FILE}: unknown protocol '{protocol}'; use {PROTOCOLS}")
        for entry in entries:
            unknown = set(entry["scores"]) - {*TASKS, "avg"}
            if unknown or not all(isinstance(v, int | float) for v in entry["scores"].values()):
                raise ConfigError(
                    f"{BASELINES_FILE}: '{entry['label']}' has unknown tasks {sorted(unknown)} or "
                    f"non-numeric scores; tasks are {list(TASKS)} and avg"
                )
    return data


def metric_keys(protocol: str, task: str) -> list[str]:
    """The test metric keys our evaluators log for one task (or `avg`) under `protocol`."""
    main = "spearman_all" if task in YEARS else "spearman"
    keys = [f"test/{protocol}/{task}/{main}"]
    if protocol == "mteb":  # mteb's own evaluator (eval=mteb) names tasks and metrics its way
        keys.append(f"test/mteb/{MTEB_NAMES.get(task, task)}/cosine_spearman")
    return keys


def reference_scores(protocol: str) -> dict[str, dict[str, float]]:
    """{label: {metric key: published score}} for one protocol (senteval | mteb)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol '{protocol}' is unknown: choose from {list(PROTOCOLS)}")
    return {
        entry["label"]: {
            key: float(score)
            for task, score in entry["scores"].items()
            for key in metric_keys(protocol, task)
        }
        for entry in published().get(protocol, [])
    }


def reference_runs() -> list[dict]:
    """Every published entry as {key, name, tags, metrics} for store/references.py."""
    runs = []
    for protocol in PROTOCOLS:
        scores = reference_scores(protocol)
        for entry in published().get(protocol, []):
            tags = {
                "eval.protocol": protocol,
                "source": entry["source"],
                "reference.method": entry["method"],
                "reference.backbone": entry["backbone"],
                "mlflow.note.content": entry.get("note", "")
                or f"Published numbers ({entry['source']}), not a csetrain run.",
            }
            runs.append(
                {
                    "key": f"{protocol}/{entry['label']}",
                    "name": f"published: {entry['label']} ({protocol})",
                    "tags": tags,
                    "metrics": scores[entry["label"]],
                }
            )
    return runs
