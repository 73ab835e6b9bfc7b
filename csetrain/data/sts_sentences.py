"""Unlabelled sentences from STS pair files, e.g. the STS-B *train* sentences Mirror-BERT trains on."""

from __future__ import annotations

from pathlib import Path

from csetrain.data.sources import TextLines


class STSSentences(TextLines):
    """The distinct sentences of `score<TAB>sentence1<TAB>sentence2` files (no quoting: rows with
    `"` stay intact), in order of first appearance (sentence1 then sentence2 of each row), as
    `anchor` records. Scores are ignored: the corpus is unlabelled text.

    Only ever point it at a *train* split: the dev split selects checkpoints, the test splits are
    the final evaluation (training on STS-B train sentences is in-domain for STS-B, as
    Mirror-BERT's headline runs are).
    """

    what = "STS pair file"

    def __init__(
        self,
        files: list[str],
        data_dir: str | None = None,
        name: str = "sts_sentences",
        max_length: int = 32,
        max_sentences: int | None = None,
    ):
        super().__init__(files, data_dir, name, max_length, max_sentences)

    def sentences(self, path: Path, rel: str) -> list[str]:
        """sentence1 then sentence2 of each row (the STS reader: no CSV quoting)."""
        from csetrain.eval.sts import read_pairs  # the one reader of the STS file format

        pairs = read_pairs(path, rel)
        return [s for pair in zip(pairs.first, pairs.second) for s in pair]

    def select(self, sentences: list[str]) -> list[str]:
        """Distinct non-blank sentences, in order of first appearance."""
        return [s for s in dict.fromkeys(sentences) if s.strip()]
