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
    Table,
    checksum_names,
    columns_table,
    dataset_checksums,
    load_hub,
    pick_split,
    read_file,
)
from csetrain.data.hard_negatives import (
    column_list,
    common_count,
    negative_fields,
    numbered_columns,
)
from csetrain.data.rows import BadRows, parsed_rows, records_of
from csetrain.data.sources import Corpus, sha256_file

log = logging.getLogger(__name__)

ROLES = ("anchor", "positive", "hard_negative")
# Column names of common layouts, tried in order (case-insensitive); a layout matches when its
# anchor (and positive, where it has one) columns exist; its hard_negative column is optional,
# and may be a list column or numbered columns (negative_1, negative_2, ...).
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


def default_mapping(table: Table) -> dict[str, str]:
    """The role -> column mapping of the first layout the columns match; otherwise one column is
    the anchor and two columns are (anchor, positive) in file order."""
    by_lower = {c.lower(): c for c in table.columns}
    for _, layout in LAYOUTS:
        needed = [r for r in ("anchor", "positive") if r in layout]
        if all(layout[r] in by_lower for r in needed):
            mapping = {r: by_lower[c] for r, c in layout.items() if c in by_lower}
            base = layout.get("hard_negative") if "hard_negative" not in mapping else None
            if base and (numbered := numbered_columns(base, by_lower)):
                mapping["hard_negative"] = numbered[0] if len(numbered) == 1 else numbered
            return mapping
    if len(table.columns) in (1, 2):
        return dict(zip(ROLES, table.columns))
    raise ConfigError(
        f"{table.label}: columns {table.columns} match no known layout — name the roles, e.g. "
        f"data.columns='{{anchor:{table.columns[0] if table.columns else 'col'},positive:...}}'"
    )


def given_mapping(columns: dict, table: Table) -> dict[str, str | list[str]]:
    """The user's `data.columns` ({role: column}; hard_negative may name a list of columns),
    checked against the roles and the table."""
    if unknown := [r for r in columns if r not in ROLES]:
        raise ConfigError(f"data.columns: unknown roles {unknown} — use {list(ROLES)}")
    if "anchor" not in columns:
        raise ConfigError("data.columns names no anchor column — add anchor: <column>")
    mapping = {}
    for role in (r for r in ROLES if columns.get(r) is not None):
        names = column_list(columns[role])
        if len(names) != 1 and role != "hard_negative":
            raise ConfigError(
                f"data.columns.{role}={names}: name one column (only hard_negative takes a list)"
            )
        for column in names:
            if column not in table.columns:
                raise ConfigError(
                    f"{table.label}: no column '{column}' for data.columns.{role} — its columns are {table.columns}"
                )
        mapping[role] = names[0] if len(names) == 1 else names
    return mapping


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
    `data.dropped_rows` (`on_bad_row: drop`). Texts are stripped; duplicates are kept.

    Hard negatives: the hard_negative column may hold a list of texts, several columns may be
    mapped to it (`hard_negative: [n1, n2, n3]`; a layout's numbered `negative_1..k` are found
    by default); a row's negatives are its columns' texts in order. k (`negatives`, else the
    count most rows of the first file have) is the same for every row: a row with another
    count is a bad row. See csetrain/data/hard_negatives.py for the fields they become."""

    def __init__(
        self,
        path: str | None = None,
        hub: str | None = None,
        subset: str | None = None,
        split: str = "train",
        columns: dict | None = None,
        header: bool = True,
        on_bad_row: str = "fail",
        negatives: int | None = None,
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
        if negatives is not None and (
            isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1
        ):
            raise ConfigError(
                f"data.negatives={negatives!r}: give k, the hard negatives of every row (an integer >= 1), or null to take the count most rows have"
            )
        self.negatives = negatives

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

    def read(self, tables: list[Table], bad: BadRows):
        """(records, each table's mapping, the fields, the columns not read) of the tables,
        which must share their roles and their k hard negatives a row (data.negatives, else
        the first table's most common count)."""
        records, mappings, roles, unread = [], {}, None, {}
        count = self.negatives
        for table in (t for t in tables if t.rows):
            mapping = given_mapping(self.columns, table) if self.columns else default_mapping(table)
            found = tuple(r for r in ROLES if r in mapping)
            if roles is not None and found != roles:
                raise ConfigError(
                    f"{table.label}: gives roles {list(found)}, earlier files {list(roles)} — read files of one layout together"
                )
            roles, mappings[table.label] = found, mapping
            used = [c for value in mapping.values() for c in column_list(value)]
            unread.update(dict.fromkeys(c for c in table.columns if c not in used))
            parsed = parsed_rows(table, mapping, bad)
            if count is None:
                count = common_count(
                    [len(r["hard_negative"]) for _, r in parsed if "hard_negative" in r]
                )
            given = self.negatives is not None
            records += records_of(table.label, parsed, count, given, bad)
        if self.negatives is not None and "hard_negative" not in (roles or ()):
            raise ConfigError(
                f"data.negatives={self.negatives} but no column is mapped to hard_negative — map one in data.columns or unset data.negatives"
            )
        fields = tuple(
            f
            for r in roles or ()
            for f in (negative_fields(count) if r == "hard_negative" else (r,))
        )
        return records, mappings, fields, list(unread)

    def load(self) -> Corpus:
        tables, checksums = self.tables()
        bad = BadRows(self.on_bad_row)
        records, mappings, fields, unread = self.read(tables, bad)
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
            dict.fromkeys(
                ",".join(f"{r}={'+'.join(column_list(c))}" for r, c in m.items())
                for m in mappings.values()
            )
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
        if negatives := [f for f in fields if f.startswith("hard_negative")]:
            tags["data.hard_negatives"] = str(len(negatives))  # k, per row
        return Corpus(
            f"{self.name}-{digest}", records, fields, checksums, self.max_length, tags=tags
        )
