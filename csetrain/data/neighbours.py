"""Neighbouring sentences of a document as (anchor, positive) pairs: the training data of CCP
(contrastive context prediction, Wu et al., arXiv 2206.03281)."""

from __future__ import annotations

from pathlib import Path

from csetrain.config import ConfigError, require_file, resolve_data_dir
from csetrain.data.sources import Corpus, _read_text, sha256_file


def neighbour_pairs(num_sentences: int, window: int) -> list[tuple[int, int]]:
    """Every ordered (center, context) pair of a document of `num_sentences` sentences whose
    positions differ by 1..`window`: CCP's context window centred on each sentence."""
    return [
        (center, other)
        for center in range(num_sentences)
        for other in range(max(0, center - window), min(num_sentences, center + window + 1))
        if other != center
    ]


def read_documents(path: Path) -> list[list[str]]:
    """One sentence per line, in document order; a blank line ends a document (so does the end
    of the file). A file without blank lines is one document."""
    documents, current = [], []
    for line in _read_text(path).splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            documents.append(current)
            current = []
    return documents + ([current] if current else [])


def first_sentences(documents: list[list[str]], limit: int | None) -> list[list[str]]:
    """The documents cut after the first `limit` sentences in reading order (None: all)."""
    if not limit:
        return documents
    kept, left = [], limit
    for doc in documents:
        if left <= 0:
            break
        kept.append(doc[:left])
        left -= len(kept[-1])
    return kept


class NeighbourPairs:
    """(anchor, positive) records: each sentence paired with every sentence at most `window`
    lines away in the same document, both orders (the data CCP trains on).

    Documents are separated by blank lines and never span files. Where a corpus does not mark
    its documents (the data pack's WikiText-2 file dropped the article headings), the whole file
    is one document and only pairs that straddle an article boundary are wrong: about
    window*(window+1) of them per boundary (WikiText-2 test: 60 articles, ~1% of the pairs at
    window 2). `max_sentences` keeps the first sentences in reading order before pairing.
    """

    fields = ("anchor", "positive")

    def __init__(
        self,
        files: list[str],
        data_dir: str | None = None,
        name: str = "neighbours",
        window: int = 2,
        max_length: int = 32,
        max_sentences: int | None = None,
    ):
        if window < 1:
            raise ConfigError(f"data.window={window}: choose 1 or more sentences")
        self.files, self.data_dir, self.name, self.window = list(files), data_dir, name, window
        self.max_length, self.max_sentences = max_length, max_sentences

    def load(self) -> Corpus:
        root = resolve_data_dir(self.data_dir)
        documents, checksums = [], {}
        for rel in self.files:
            path = require_file(root / rel, "document file", "data.files")
            checksums[rel] = sha256_file(path)
            documents += read_documents(path)
        documents = first_sentences(documents, self.max_sentences)
        records = [
            {"anchor": doc[center], "positive": doc[other]}
            for doc in documents
            for center, other in neighbour_pairs(len(doc), self.window)
        ]
        if not records:
            raise ConfigError(
                f"corpus {self.files} under {root} has no document of 2 or more sentences: point data.files at running text, one sentence per line"
            )
        # The window changes the records but not the files: it is part of the name, which keys
        # the tokenization cache together with the checksums.
        name = f"{self.name}-w{self.window}"
        return Corpus(name, records, self.fields, checksums, self.max_length)
