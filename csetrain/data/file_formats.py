"""The rows of each source `data=files` reads (file formats, save_to_disk folders, the Hub),
each row with the place errors name it by, and the checksums of the files behind them.

Line-based formats (.txt, .csv, .tsv, .jsonl) name a row by its 1-based line number (what an
editor shows); indexed formats (a .json array, .parquet, a `save_to_disk` folder, a Hub
dataset) by its 0-based index (`row 3` is `data[3]`). Values keep their type (a JSON number
stays a number) so the mapping step can refuse what is not text. The standard library reads the
text formats: it gives line numbers, keeps every value a string in CSV/TSV (no type guessing,
no "NA" turned into a missing value) and lets one bad JSON line be one bad row instead of a
failed file."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from csetrain.config import ConfigError
from csetrain.data.sources import _read_text, sha256_file

SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".json", ".parquet")


@dataclass(slots=True)
class Row:
    """One row: where it is (`5` or `row 4`), its values, and a problem found while parsing."""

    where: str
    values: dict
    problem: tuple[str, str] | None = None  # (what is wrong, how to fix it)


@dataclass
class Table:
    """The rows of one source and its column names in first-seen order."""

    label: str  # the file (or Hub dataset) as errors name it
    columns: list[str]
    rows: list[Row] = field(default_factory=list)


def read_text(path: Path) -> str:
    """The file as UTF-8 text, without a byte-order mark."""
    return _read_text(path).removeprefix("\ufeff")


def lines(text: str):
    """(line number, line) for every line, CRLF or LF; only '\\n' ends a line (not U+2028)."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def read_txt(path: Path, header: bool) -> Table:
    """One sentence a line as column `text`; blank lines separate nothing and are skipped."""
    rows = [Row(str(n), {"text": line}) for n, line in lines(read_text(path)) if line.strip()]
    return Table(str(path), ["text"], rows)


def read_delimited(path: Path, header: bool) -> Table:
    """CSV (standard quoting) or TSV (no quoting: a `"` is text, as in the STS files), with a
    header row unless `header` is false (then columns are named by position: "0", "1", ...)."""
    tsv = path.suffix.lower() == ".tsv"
    quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    reader = csv.reader(
        io.StringIO(read_text(path), newline=""), delimiter="\t" if tsv else ",", quoting=quoting
    )
    columns, rows = None, []
    try:
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            if not any(f.strip() for f in fields):
                continue  # a blank line is no row
            if columns is None:
                columns = (
                    [f.strip() for f in fields] if header else [str(i) for i in range(len(fields))]
                )
                if len(set(columns)) != len(columns):
                    raise ConfigError(
                        f"{path}:{start}: header repeats a column name ({columns}) — give each column its own name"
                    )
                if header:
                    continue
            rows.append(_delimited_row(path, fields, columns, start, reader.line_num))
    except csv.Error as err:
        raise ConfigError(
            f"{path}:{reader.line_num}: {err} — fix the quoting on that line"
        ) from None
    return Table(str(path), columns or [], rows)


def _delimited_row(path: Path, fields: list[str], columns: list[str], start: int, end: int) -> Row:
    """The row's values by column, with a field-count or line-spanning problem noted."""
    row = Row(str(start), dict(zip(columns, fields)))
    tsv = path.suffix.lower() == ".tsv"
    if len(fields) != len(columns):
        sep = "a tab" if tsv else "','"
        fix = f"fields containing {sep} must be quoted" if not tsv else "remove stray tabs"
        row.problem = (
            f"{len(fields)} fields, the header has {len(columns)}",
            f"{fix}, or fill in the missing ones",
        )
    elif end != start and any("\n" in f or "\r" in f for f in fields):
        # Not one bad row: an open quote swallows the lines after it, so no policy may skip it.
        raise ConfigError(
            f"{path}:{start}: a quoted field runs from line {start} to line {end} — close the quote, or remove the line break inside it"
        )
    return row


def _columns_of(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in records for k in r))


def read_jsonl(path: Path, header: bool) -> Table:
    """One JSON object a line; a line that is not one is a bad row, not a failed file."""
    return _jsonl_table(path, read_text(path))


def _jsonl_table(path: Path, text: str) -> Table:
    rows = []
    for number, line in lines(text):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append(
                Row(str(number), {}, (f"not valid JSON ({err.msg})", "one JSON object a line"))
            )
            continue
        if not isinstance(value, dict):
            what = f"a JSON {type(value).__name__}, not an object"
            rows.append(Row(str(number), {}, (what, 'write {"column": "text", ...} on each line')))
            continue
        rows.append(Row(str(number), value))
    return Table(str(path), _columns_of([r.values for r in rows]), rows)


def read_json(path: Path, header: bool) -> Table:
    """A JSON array of objects, an object of equally long column lists, or JSON lines."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several documents: JSON lines in a .json file
            return _jsonl_table(path, text)
        raise ConfigError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg}) — fix the file, or write one object a line as .jsonl"
        ) from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        if len({len(v) for v in data.values()}) != 1:
            raise ConfigError(
                f"{path}: its column lists differ in length — give every column one value a row"
            )
        return columns_table(str(path), data)
    if not isinstance(data, list):
        raise ConfigError(
            f"{path}: a JSON {type(data).__name__} — write an array of objects, or an object of column lists"
        )
    rows = []
    for i, value in enumerate(data):
        if isinstance(value, dict):
            rows.append(Row(f"row {i}", value))
        else:
            what = f"a JSON {type(value).__name__}, not an object"
            rows.append(Row(f"row {i}", {}, (what, 'give each row as {"column": "text", ...}')))
    return Table(str(path), _columns_of([r.values for r in rows]), rows)


def columns_table(label: str, columns: dict[str, list]) -> Table:
    """A table from equally long column lists (parquet, Arrow, JSON columns)."""
    names = list(columns)
    count = len(columns[names[0]]) if names else 0
    rows = [Row(f"row {i}", {c: columns[c][i] for c in names}) for i in range(count)]
    return Table(label, names, rows)


def read_parquet(path: Path, header: bool) -> Table:
    """A parquet file through pyarrow (the reader `datasets` itself uses for parquet)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{path}: not a readable parquet file ({first}) — rewrite it") from None
    return columns_table(str(path), table.to_pydict())


READERS = {
    ".txt": read_txt,
    ".csv": read_delimited,
    ".tsv": read_delimited,
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".parquet": read_parquet,
}


def read_file(path: Path, header: bool = True) -> Table:
    """The rows of one file, by its suffix."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(
            f"{path}: unknown format '{path.suffix}' — use one of {', '.join(SUFFIXES)} or a save_to_disk folder"
        )
    return reader(path, header)


def checksum_names(checksums: dict[Path | str, str], root: Path | None) -> dict[str, str]:
    """The checksums named by path relative to `root`, in the characters an MLflow tag key
    allows (others become '_'; a name made equal to another gets a '~N' suffix)."""
    named = {}
    for file, digest in checksums.items():
        name = Path(file).relative_to(root).as_posix() if root is not None else str(file)
        name = re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)
        base, n = name, 1
        while name in named:
            name, n = f"{base}~{n}", n + 1
        named[name] = digest
    return named


def pick_split(dataset, label: str, split: str):
    """The Dataset itself, or the `split` of a DatasetDict."""
    if not isinstance(dataset, dict):  # a Dataset; a DatasetDict is a dict of them
        return dataset
    if split not in dataset:
        raise ConfigError(f"{label}: no split '{split}' — set data.split to one of {list(dataset)}")
    return dataset[split]


def dataset_checksums(dataset, root: Path | None, prefix: str) -> dict[str, str]:
    """sha256 of the Arrow files behind a Dataset, named relative to `root` (else by `prefix`)."""
    checksums = {}
    for entry in dataset.cache_files:
        file = Path(entry["filename"]).resolve()
        inside = root is not None and file.is_relative_to(root.resolve())
        checksums[file.relative_to(root.resolve()) if inside else f"{prefix}/{file.name}"] = (
            sha256_file(file)
        )
    if not checksums:  # an in-memory dataset has no files
        checksums[prefix] = dataset._fingerprint
    return checksum_names(checksums, None)


def load_hub(dataset_id: str, subset: str | None, split: str):
    """The Hub dataset through `datasets.load_dataset` (its cache first); one line when it fails."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, subset, split=split)
    except Exception as err:  # noqa: BLE001 - offline, missing, private: all one message
        offline = (
            " (offline mode: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set)"
            if datasets.config.HF_HUB_OFFLINE
            else ""
        )
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"data.hub={dataset_id!r}: cannot load it{offline}: {first} — where there is internet, "
            "load it and save_to_disk(<folder>), then use data.path=<folder>"
        ) from None
