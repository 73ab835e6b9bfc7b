"""`data=files`: the user's own data (a file, a glob, a folder, a `save_to_disk` folder or a
Hub dataset) read into role-named records through a column -> role mapping."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
from pathlib import Path

from csetrain.config import ConfigError
from csetrain.data.file_formats import (
    SUFFIXES,
    Row,
    Table,
    checksum_names,
    columns_table,
    dataset_checksums,
    load_hub,
    pick_split,
    read_file,
)
from csetrain.data.sources import Corpus, sha256_file

log = logging.getLogger(__name__)

ROLES = ("anchor", "positive", "hard_negative")
# Column names of common layouts, tried in order (case-insensitive); a layout matches when its
# anchor (and positive, where it has one) columns exist; its hard_negative column is optional.
LAYOUTS = (
    (
        "sentence-transformers",
        {"anchor": "anchor", "positive": "positive", "hard_negative": "negative"},
    ),
    ("SimCSE", {"anchor": "sent0", "positive": "sent1", "hard_negative": "hard_neg"}),
    ("query/pos/neg", {"anchor": "query", "positive": "pos", "hard_negative": "neg"}),
    ("query/positive", {"anchor": "query", "positive": "positive", "hard_negative": "negative"}),
    ("sentence pairs", {"anchor": "sentence1", "positive": "sentence2"}),
    ("text", {"anchor": "text"}),
    ("sentence", {"anchor": "sentence"}),
)
POLICIES = ("fail", "drop")


def default_mapping(table: Table) -> dict[str, str]:
    """The role -> column mapping of the first layout the columns match; otherwise one column is
    the anchor and two columns are (anchor, positive) in file order."""
    by_lower = {c.lower(): c for c in table.columns}
    for _, layout in LAYOUTS:
        needed = [r for r in ("anchor", "positive") if r in layout]
        if all(layout[r] in by_lower for r in needed):
            return {r: by_lower[c] for r, c in layout.items() if c in by_lower}
    if len(table.columns) in (1, 2):
        return dict(zip(ROLES, table.columns))
    raise ConfigError(
        f"{table.label}: columns {table.columns} match no known layout — name the roles, e.g. "
        f"data.columns='{{anchor:{table.columns[0] if table.columns else 'col'},positive:...}}'"
    )


def given_mapping(columns: dict, table: Table) -> dict[str, str]:
    """The user's `data.columns` ({role: column}), checked against the roles and the table."""
    if unknown := [r for r in columns if r not in ROLES]:
        raise ConfigError(f"data.columns: unknown roles {unknown} — use {list(ROLES)}")
    if "anchor" not in columns:
        raise ConfigError("data.columns names no anchor column — add anchor: <column>")
    mapping = {r: str(columns[r]) for r in ROLES if columns.get(r) is not None}
    for role, column in mapping.items():
        if column not in table.columns:
            raise ConfigError(
                f"{table.label}: no column '{column}' for data.columns.{role} — its columns are {table.columns}"
            )
    return mapping


def bad_value(value, column: str) -> tuple[str, str] | None:
    """What is wrong with a value where text is expected, and the fix; None if it is text."""
    if value is _MISSING:
        return f"no '{column}' value", "add it"
    if value is None:
        return f"'{column}' is null", "give it text"
    if not isinstance(value, str):
        kind = {bool: "boolean", int: "number", float: "number"}.get(
            type(value), type(value).__name__
        )
        return f"'{column}' is a {kind} ({str(value)[:40]}), not text", "give it text"
    if not value.strip():
        return f"'{column}' is empty", "fill it in"
    return None


_MISSING = object()


class BadRows:
    """The `data.on_bad_row` policy: fail on the first bad row, or drop and count them."""

    def __init__(self, policy: str):
        if policy not in POLICIES:
            raise ConfigError(f"data.on_bad_row={policy!r}: choose one of {list(POLICIES)}")
        self.policy, self.dropped, self.first = policy, 0, None

    def report(self, label: str, row: Row, problem: tuple[str, str]) -> None:
        what, fix = problem
        message = (
            f"{label}:{row.where}: {what} — {fix}, delete the row, or set data.on_bad_row=drop"
        )
        if self.policy == "fail":
            raise ConfigError(message)
        self.dropped += 1
        self.first = self.first or message


def records_of(table: Table, mapping: dict[str, str], bad: BadRows) -> list[dict[str, str]]:
    """The table's rows as {role: stripped text}; bad rows go to the policy."""
    records = []
    for row in table.rows:
        problem = row.problem
        for column in mapping.values():
            if problem is None:
                problem = bad_value(row.values.get(column, _MISSING), column)
        if problem is not None:
            bad.report(table.label, row, problem)
            continue
        records.append({role: row.values[column].strip() for role, column in mapping.items()})
    return records


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _file_list(path: str) -> tuple[Path, list[Path]]:
    """(root the checksum names are relative to, the files) of a file, a glob or a folder."""
    if glob.has_magic(path):
        files = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        if not files:
            raise ConfigError(f"data.path={path!r} matches no file — check the pattern")
        root = Path(path.split("*")[0].split("?")[0].split("[")[0])
        return (root if root.is_dir() else root.parent), files
    p = Path(path)
    if p.is_dir():
        files = sorted(
            f
            for f in p.rglob("*")
            if f.is_file()
            and f.suffix.lower() in SUFFIXES
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        )
        if not files:
            raise ConfigError(
                f"data.path={path!r}: the folder has no {'/'.join(SUFFIXES)} file and is no save_to_disk folder"
            )
        return p, files
    if p.is_file():
        return p.parent, [p]
    raise ConfigError(
        f"data.path={path!r}: no such file or folder — give a file, a glob or a folder"
    )


class Files:
    """Records from the user's files or a Hub dataset: `path` (a file, a glob, a folder of
    .txt/.csv/.tsv/.jsonl/.json/.parquet files, or a `save_to_disk` folder) or `hub` (a dataset
    id, through `datasets.load_dataset`, then read exactly as a save_to_disk folder).

    `columns` maps roles to columns ({anchor: query, positive: pos, hard_negative: neg}); without
    it each file's layout decides (see LAYOUTS). The roles mapped are the corpus's fields, so
    they decide which objectives can train on it. A bad row (a missing or null value, empty
    text, a number or list where text belongs, a malformed line) fails the load with
    `file:row: what — fix` (`on_bad_row: fail`) or is dropped and counted in the tag
    `data.dropped_rows` (`on_bad_row: drop`). Texts are stripped; duplicates are kept."""

    def __init__(
        self,
        path: str | None = None,
        hub: str | None = None,
        subset: str | None = None,
        split: str = "train",
        columns: dict | None = None,
        header: bool = True,
        on_bad_row: str = "fail",
        name: str = "files",
        max_length: int = 32,
        max_sentences: int | None = None,
    ):
        if bool(path) == bool(hub):
            raise ConfigError(
                "data=files reads data.path=<file, glob or folder> or data.hub=<dataset id>: set exactly one"
            )
        self.path, self.hub, self.subset, self.split = path, hub, subset, split
        self.columns, self.header, self.on_bad_row = dict(columns or {}), header, on_bad_row
        self.name, self.max_length, self.max_sentences = name, max_length, max_sentences

    def tables(self) -> tuple[list[Table], dict[str, str]]:
        """The tables to read and the sha256 of every file behind them."""
        if self.hub:
            dataset = pick_split(load_hub(self.hub, self.subset, self.split), self.hub, self.split)
            checksums = dataset_checksums(dataset, None, self.hub)
            return [columns_table(f"data.hub={self.hub}", dataset.to_dict())], checksums
        path = str(Path(self.path).expanduser())
        if Path(path).is_dir() and _is_saved_dataset(Path(path)):
            import datasets

            dataset = pick_split(datasets.load_from_disk(path), path, self.split)
            checksums = dataset_checksums(dataset, Path(path), Path(path).name)
            return [columns_table(path, dataset.to_dict())], checksums
        root, files = _file_list(path)
        checksums = checksum_names({f: sha256_file(f) for f in files}, root)
        return [read_file(f, self.header) for f in files], checksums

    def load(self) -> Corpus:
        tables, checksums = self.tables()
        bad, records, mappings, fields, unread = BadRows(self.on_bad_row), [], {}, None, {}
        for table in (t for t in tables if t.rows):
            mapping = given_mapping(self.columns, table) if self.columns else default_mapping(table)
            roles = tuple(r for r in ROLES if r in mapping)
            if fields is not None and roles != fields:
                raise ConfigError(
                    f"{table.label}: gives roles {list(roles)}, earlier files {list(fields)} — read files of one layout together"
                )
            fields, mappings[table.label] = roles, mapping
            unread.update(dict.fromkeys(c for c in table.columns if c not in mapping.values()))
            records += records_of(table, mapping, bad)
        records = records[: self.max_sentences or None]
        source = f"data.hub={self.hub!r}" if self.hub else f"data.path={self.path!r}"
        if not records:
            dropped = (
                f" ({bad.dropped} bad rows dropped, the first: {bad.first})" if bad.dropped else ""
            )
            raise ConfigError(f"{source}: no usable rows{dropped} — point it at non-empty data")
        if bad.dropped:
            log.warning("%s: dropped %d bad rows; the first: %s", source, bad.dropped, bad.first)
        described = ";".join(
            dict.fromkeys(",".join(f"{r}={c}" for r, c in m.items()) for m in mappings.values())
        )
        log.info(
            "%s: %d rows from %d source(s), columns %s%s",
            source,
            len(records),
            len(tables),
            described,
            f" (not read: {', '.join(unread)})" if unread else "",
        )
        # The mapping changes the records but not the files: it keys the tokenization cache
        # (through the name) together with the checksums.
        digest = hashlib.sha256(json.dumps(list(mappings.values())).encode()).hexdigest()[:8]
        tags = {"data.dropped_rows": str(bad.dropped), "data.columns": described}
        return Corpus(
            f"{self.name}-{digest}", records, fields, checksums, self.max_length, tags=tags
        )
