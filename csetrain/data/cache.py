"""Tokenize a corpus once and keep it on disk (an Arrow dataset via `datasets`), keyed by
everything that changes the tokens: file checksums, tokenizer, truncation length."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from csetrain.config import ConfigError
from csetrain.data.sources import Corpus


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what maps text to ids. The backend's padding/truncation state is left out: every
    call with truncation=True rewrites it, and it does not change the cached (unpadded) ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = {
            k: v
            for k, v in json.loads(backend.to_str()).items()
            if k not in ("truncation", "padding")
        }
    else:
        state = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def cache_key(corpus: Corpus, tokenizer) -> str:
    parts = {
        "checksums": corpus.checksums,
        "n": len(corpus.records),
        "fields": corpus.fields,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": corpus.max_length,
        "format": 1,
    }
    if corpus.instruction:  # the anchors' text changed, the files did not
        parts["instruction"] = corpus.instruction
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def tokenized_dataset(corpus: Corpus, tokenizer, cache_dir: str | Path):
    """Dataset with the text columns plus `<field>_ids` (truncated to `corpus.max_length`, unpadded)."""
    import datasets

    target = Path(cache_dir) / "tokenized" / f"{corpus.name}-{cache_key(corpus, tokenizer)}"
    if (target / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(target))
    columns = {f: [r[f] for r in corpus.records] for f in corpus.fields}
    ds = datasets.Dataset.from_dict(columns)

    def tokenize(batch):
        return {
            f"{f}_ids": tokenizer(batch[f], truncation=True, max_length=corpus.max_length)[
                "input_ids"
            ]
            for f in corpus.fields
        }

    ds = ds.map(tokenize, batched=True, batch_size=2000, desc="tokenize")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    save(ds, tmp, Path(cache_dir))
    try:
        tmp.rename(target)  # atomic: a killed run never leaves a half-written cache entry
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def save(ds, tmp: Path, cache_dir: Path) -> None:
    """Write `ds` into the temp folder `tmp`; on any failure the folder is removed, so no
    partial Arrow file is left behind, and a full disk is one line naming the cache dir."""
    try:
        ds.save_to_disk(str(tmp))
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        full = isinstance(err, OSError) and (
            err.errno == errno.ENOSPC or "No space left on device" in str(err)
        )
        if full:  # pyarrow's write errors carry the reason in the text, not always in errno
            raise ConfigError(
                f"no space left in the tokenization cache {cache_dir}: free space there "
                "or set paths.cache_dir to a disk with room"
            ) from None
        raise
