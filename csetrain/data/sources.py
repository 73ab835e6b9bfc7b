"""Corpus readers. Each returns a list of records {field: text}; fields name their role
(`anchor`, `positive`, `hard_negative`) so objectives ask for roles, never for column counts."""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from csetrain.config import ConfigError, require_file, resolve_data_dir

log = logging.getLogger(__name__)
NLI_COLUMNS = {"sent0": "anchor", "sent1": "positive", "hard_neg": "hard_negative"}
# NV-Embed's query template (arXiv 2405.17428, §3.3): the task definition, then the query.
INSTRUCTION_TEMPLATE = "Instruct: {task}\nQuery: "


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, without a leading byte-order mark (spreadsheet tools write one)."""
    data = path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = data[:offset].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not valid UTF-8 (byte {offset}); re-encode the file as UTF-8"
        ) from None


def warn_if_repetitive(sentences: list[str], files: list[str]) -> None:
    """Warn when under half the sentences are distinct: a batch then often pairs a sentence with
    its own copy as a "negative", and the contrastive loss pushes identical texts apart."""
    distinct = len(set(sentences))
    if distinct * 2 < len(sentences):
        log.warning(
            "corpus %s has only %d distinct sentences of %d: in-batch negatives will often be "
            "copies of the positive; deduplicate the file or point data.files at more text",
            files,
            distinct,
            len(sentences),
        )


@dataclass
class Corpus:
    """Records plus provenance (file -> sha256) for run tags."""

    name: str
    records: list[dict[str, str]]
    fields: tuple[str, ...]
    checksums: dict[str, str]
    max_length: int = 32  # training truncation in tokens (SimCSE's max_seq_length)
    instruction: str | None = None  # the task its anchors are prefixed with (see load_corpus)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # more run tags (data.*)
    # The prompts its training texts carried, by sentence-transformers prompt name ("query": the
    # instruction prefix; "document": what positives carried, "" or the same prefix); an
    # exported model saves them so encode(prompt_name=...) matches (modeling/prompts.py).
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)


def instruction_prefix(task: str) -> str:
    """The text NV-Embed puts before a query: 'Instruct: {task}\\nQuery: '."""
    return INSTRUCTION_TEMPLATE.format(task=task)


def load_corpus(source, instruction: str | None = None) -> Corpus:
    """The corpus a data reader (TextLines, PairsCSV, ...) loads, with an optional instruction
    (the `data` option's `instruction: <task definition>`, `+data.instruction=...` on the command
    line): every *anchor* (the query side) then becomes instruction_prefix(task) + anchor, in the
    records, so the token ids, the raw-text column and every miner see the same text. Positives
    and hard negatives (the document side) stay bare, as NV-Embed leaves documents without
    instructions; with single-field data the positive is the anchor's own second view, so both
    views carry it (STS is symmetric: NV-Embed instructs both of its sentences). The prefix
    counts toward `max_length`."""
    corpus = source.load()
    if not instruction:
        return corpus
    if not isinstance(instruction, str):
        raise ConfigError(f"data.instruction={instruction!r}: give the task definition as a string")
    prefix = instruction_prefix(instruction)
    records = [{**r, "anchor": prefix + r["anchor"]} for r in corpus.records]
    # Documents carried the prefix too when the positive is the anchor's own view (one field).
    document = prefix if corpus.fields == ("anchor",) else ""
    prompts = {"query": prefix, "document": document}
    return dataclasses.replace(corpus, records=records, instruction=instruction, prompts=prompts)


class TextLines:
    """One sentence per line (unsupervised SimCSE's wiki1m format); blank lines are skipped."""

    fields = ("anchor",)

    def __init__(
        self,
        files: list[str],
        data_dir: str | None = None,
        name: str = "text",
        max_length: int = 32,
        max_sentences: int | None = None,
    ):
        self.files, self.data_dir, self.name = list(files), data_dir, name
        self.max_length, self.max_sentences = max_length, max_sentences

    what = "corpus file"  # how errors name the files

    def sentences(self, path: Path, rel: str) -> list[str]:
        """The sentences of one file: its non-blank lines, stripped."""
        return [line.strip() for line in _read_text(path).splitlines() if line.strip()]

    def select(self, sentences: list[str]) -> list[str]:
        """All of them, in order (duplicates kept, as wiki1m keeps them)."""
        return sentences

    def load(self) -> Corpus:
        root = resolve_data_dir(self.data_dir)
        sentences, checksums = [], {}
        for rel in self.files:
            path = require_file(root / rel, self.what, "data.files")
            checksums[rel] = sha256_file(path)
            sentences += self.sentences(path, rel)
        sentences = self.select(sentences)[: self.max_sentences or None]
        if not sentences:
            raise ConfigError(
                f"corpus {self.files} under {root} has no non-blank lines: point data.files at real text"
            )
        warn_if_repetitive(sentences, self.files)
        records = [{"anchor": s} for s in sentences]
        return Corpus(self.name, records, self.fields, checksums, self.max_length)


class TripletCSV:
    """SimCSE's supervised CSV with header `sent0,sent1,hard_neg` (premise, entailment, contradiction)."""

    fields = ("anchor", "positive", "hard_negative")

    def __init__(
        self,
        file: str,
        data_dir: str | None = None,
        name: str = "nli",
        max_length: int = 32,
        max_sentences: int | None = None,
    ):
        self.file, self.data_dir, self.name = file, data_dir, name
        self.max_length, self.max_sentences = max_length, max_sentences

    def load(self) -> Corpus:
        path = require_file(
            resolve_data_dir(self.data_dir) / self.file, "NLI triplet CSV", "data.file"
        )
        rows = list(csv.reader(_read_text(path).splitlines()))
        if not rows or [c.strip() for c in rows[0]] != list(NLI_COLUMNS):
            raise ConfigError(
                f"{path}: header must be 'sent0,sent1,hard_neg' (SimCSE's nli_for_simcse.csv format)"
            )
        records = []
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != 3 or not all(c.strip() for c in row):
                raise ConfigError(
                    f"{path}:{number}: expected 3 non-empty fields sent0,sent1,hard_neg, got {len(row)}; fix or delete the row"
                )
            records.append({role: text.strip() for role, text in zip(NLI_COLUMNS.values(), row)})
        if self.max_sentences:
            records = records[: self.max_sentences]
        if not records:
            raise ConfigError(f"{path}: no triplets after the header")
        return Corpus(
            self.name, records, self.fields, {self.file: sha256_file(path)}, self.max_length
        )
