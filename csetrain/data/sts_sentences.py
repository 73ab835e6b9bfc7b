"""Unlabelled sentences from STS pair files, e.g. the STS-B *train* sentences Mirror-BERT trains on."""

from __future__ import annotations

from csetrain.config import ConfigError, require_file, resolve_data_dir
from csetrain.data.sources import Corpus, sha256_file


class STSSentences:
    """The distinct sentences of `score<TAB>sentence1<TAB>sentence2` files (no quoting: rows with
    `"` stay intact), in order of first appearance (sentence1 then sentence2 of each row), as
    `anchor` records. Scores are ignored: the corpus is unlabelled text.

    Only ever point it at a *train* split: the dev split selects checkpoints, the test splits are
    the final evaluation (training on STS-B train sentences is in-domain for STS-B, as
    Mirror-BERT's headline runs are).
    """

    fields = ("anchor",)

    def __init__(
        self,
        files: list[str],
        data_dir: str | None = None,
        name: str = "sts_sentences",
        max_length: int = 32,
        max_sentences: int | None = None,
    ):
        self.files, self.data_dir, self.name = list(files), data_dir, name
        self.max_length, self.max_sentences = max_length, max_sentences

    def load(self) -> Corpus:
        from csetrain.eval.sts import read_pairs  # the one reader of the STS file format

        root = resolve_data_dir(self.data_dir)
        sentences, checksums = [], {}
        for rel in self.files:
            path = require_file(root / rel, "STS pair file", "data.files")
            checksums[rel] = sha256_file(path)
            pairs = read_pairs(path, rel)
            sentences += [s for pair in zip(pairs.first, pairs.second) for s in pair]
        unique = [s for s in dict.fromkeys(sentences) if s.strip()]
        if self.max_sentences:
            unique = unique[: self.max_sentences]
        if not unique:
            raise ConfigError(
                f"{self.files} under {root} hold no sentences: point data.files at STS pair files"
            )
        records = [{"anchor": s} for s in unique]
        return Corpus(self.name, records, self.fields, checksums, self.max_length)
