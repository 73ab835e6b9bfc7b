"""The model card of an exported folder (`README.md`): records in, markdown out, nothing read.

A `CardRecord` is what a run recorded (csetrain/app/card.py builds it from the MLflow run, so
the card cannot disagree with the store); `render_card` writes Hugging Face's model-card front
matter (YAML, with a `model-index` of the test results) and the sections a reader needs: base
model, objective and paper, changed hyperparameters, data, selection, test results with their
protocol beside the start checkpoint's, seed statistics, prompts, provenance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

# test/<protocol>/<task>/<metric>, as every evaluator keys its scores (the protocol is part of
# the key, so a SentEval and an MTEB number never share a row).
TEST_KEY = re.compile(r"^test/(?P<protocol>[^/]+)/(?P<task>[^/]+)/(?P<metric>[^/]+)$")
PROTOCOLS = {
    "senteval": 'SentEval protocol (SimCSE\'s Table 5); STS12-16 in the "all" setting',
    "mteb": "MTEB's own evaluators (offline, data injected from the data pack)",
}
SUMMEVAL = {"SummEval": "SummEval v1", "SummEvalSummarization.v2": "SummEval v2"}


@dataclass
class TaskScore:
    key: str  # test/<protocol>/<task>/<metric>
    value: float
    start: float | None = None  # the start checkpoint's score under the same key


@dataclass
class DataFile:
    name: str
    sha256: str  # as recorded (a prefix of the file's SHA-256)
    licence: str


@dataclass
class CardRecord:
    run_id: str
    run_name: str  # the model's name on the card
    run_label: str  # the MLflow run's own name (its overrides)
    base_model: str
    base_revision: str
    objective: str  # the option, e.g. simcse_unsup
    objective_class: str
    paper: str  # "arXiv:2104.08821", or "" when the objective names none
    changed: dict[str, tuple[str, str]]  # key -> (value, the option's default)
    data_name: str
    data_rows: int
    data_files: list[DataFile]
    selection_metric: str
    selection_step: int
    selection_value: float
    tests: list[TaskScore]
    csetrain_version: str
    git_sha: str
    git_dirty: bool = False
    seeds: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> mean, std, ...
    seed_count: int = 0
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    export: dict[str, str] = field(default_factory=dict)  # e.g. {"layer": "4", "dim": "128"}
    extra_scores: dict[str, float] = field(default_factory=dict)  # e.g. ONNX int8's STS-B


def protocol_of(key: str) -> str:
    """The protocol a test key was scored under, in words (SummEval's version named)."""
    match = TEST_KEY.match(key)
    if match is None:
        return "unknown protocol"
    label = PROTOCOLS.get(match["protocol"], match["protocol"])
    return f"{label}; {SUMMEVAL[match['task']]}" if match["task"] in SUMMEVAL else label


def model_index(record: CardRecord) -> list[dict]:
    """Hugging Face's `model-index`: one result per test task, its metrics named with protocol."""
    results: dict[str, dict] = {}
    for score in record.tests:
        match = TEST_KEY.match(score.key)
        if match is None:
            continue
        task = match["task"]
        entry = results.setdefault(
            f"{match['protocol']}/{task}",
            {
                "task": {"type": "sentence-similarity", "name": "Semantic Textual Similarity"},
                "dataset": {"name": task, "type": task, "split": "test"},
                "metrics": [],
            },
        )
        entry["metrics"].append(
            {
                "type": match["metric"],
                "value": round(score.value, 4),
                "name": f"{match['metric']} ({match['protocol']})",
                "args": {"protocol": match["protocol"], "key": score.key},
            }
        )
    return [{"name": record.run_name, "results": list(results.values())}]


def front_matter(record: CardRecord) -> dict:
    return {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": ["sentence-transformers", "feature-extraction", "csetrain", record.objective],
        "base_model": record.base_model,
        "model-index": model_index(record),
    }


def _number(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _results(record: CardRecord) -> list[str]:
    rows = [[s.key, _number(s.value), _number(s.start), protocol_of(s.key)] for s in record.tests]
    lines = ["## Test results", "", "Scores ×100, on the selected checkpoint, tested once."]
    lines += ["", *_table(["metric", "this model", "start checkpoint", "protocol"], rows)]
    if record.extra_scores:
        rows = [[k, _number(v)] for k, v in sorted(record.extra_scores.items())]
        lines += ["", "Exported variants (same test set and protocol):", ""]
        lines += _table(["metric", "score"], rows)
    return lines


def _training(record: CardRecord) -> list[str]:
    paper = f" following {record.paper}" if record.paper else ""
    lines = [
        "## Training",
        "",
        f"- Base model: `{record.base_model}` (revision: {record.base_revision})",
        f"- Objective: `{record.objective}` (`{record.objective_class}`){paper}",
        f"- Selection: `{record.selection_metric}` (dev), best {_number(record.selection_value)}"
        f" at step {record.selection_step}; the test split was never used to select",
    ]
    if record.export:
        lines.append(
            "- Exported at: " + ", ".join(f"{k}={v}" for k, v in sorted(record.export.items()))
        )
    changed = [[f"`{k}`", f"`{v}`", f"`{d}`"] for k, (v, d) in sorted(record.changed.items())]
    lines += ["", "Hyperparameters that differ from the options' defaults:", ""]
    lines += _table(["key", "value", "default"], changed) if changed else ["(none)"]
    files = [[f"`{f.name}`", f"`{f.sha256}`", f.licence] for f in record.data_files]
    lines += ["", f"Training data `{record.data_name}`: {record.data_rows:,} rows", ""]
    lines += _table(["file", "sha256 (prefix)", "licence"], files)
    return lines


def _seeds(record: CardRecord) -> list[str]:
    if not record.seeds:
        return []
    rows = [
        [k, _number(s.get("mean")), _number(s.get("std")), _ci(s)]
        for k, s in sorted(record.seeds.items())
    ]
    lines = ["", "## Seed statistics", ""]
    lines.append(f"This run is one of {record.seed_count} seeds of a sweep (std: ddof=1).")
    return [*lines, "", *_table(["metric", "mean", "std", "95% CI of the mean"], rows)]


def _ci(stats: dict[str, float]) -> str:
    return f"[{_number(stats.get('ci_low'))}, {_number(stats.get('ci_high'))}]"


def _usage(record: CardRecord) -> list[str]:
    lines = [
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/folder")',
    ]
    if record.prompts:
        name = record.default_prompt_name or next(iter(record.prompts))
        lines.append(f'embeddings = model.encode(["a sentence"], prompt_name="{name}")')
    else:
        lines.append('embeddings = model.encode(["a sentence", "another one"])')
    lines += ["```", ""]
    if record.prompts:
        lines += ["Prompts the model was trained with (prepended to the text):", ""]
        lines += _table(
            ["prompt_name", "prompt"], [[k, repr(v)] for k, v in record.prompts.items()]
        )
        lines += ["", f"Default prompt: {record.default_prompt_name or 'none'}."]
    else:
        lines.append("Trained without prompts: encode text as it is.")
    return lines


def render_card(record: CardRecord) -> str:
    """README.md for the exported folder."""
    header = yaml.safe_dump(front_matter(record), sort_keys=False, allow_unicode=True)
    dirty = " (uncommitted changes)" if record.git_dirty else ""
    body = [
        f"# {record.run_name}",
        "",
        f"A sentence-embedding model trained with csetrain: MLflow run `{record.run_id}`"
        f" (`{record.run_label}`).",
        "",
        *_training(record),
        "",
        *_results(record),
        *_seeds(record),
        "",
        *_usage(record),
        "",
        "## Provenance",
        "",
        f"csetrain {record.csetrain_version}, git `{record.git_sha}`{dirty}; this card is "
        "generated from the run's MLflow records.",
    ]
    return f"---\n{header}---\n\n" + "\n".join(body) + "\n"


def read_front_matter(text: str) -> dict:
    """A card's front matter back as a dict (what the hub parses)."""
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])
