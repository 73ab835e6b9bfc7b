"""Disk layout of a run and atomic writes: a crash or kill never leaves a half-written model
where a complete one is expected."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing any previous `dst`."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be read
    os.replace(tmp, path)


class Checkpointer:
    """Keeps the best model (by dev metric) as a sentence-transformers folder under the run dir."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.best_dir = self.root / "best"

    def save_best(self, encoder: SentenceEncoder, step: int, metric_key: str, value: float) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".best-"))
        shutil.rmtree(tmp)  # save_sentence_transformer writes the folder itself
        save_sentence_transformer(
            encoder, tmp, {"step": step, "selected_by": metric_key, "value": value}
        )
        replace_dir(tmp, self.best_dir)
        return self.best_dir

    def load_best(self, device) -> SentenceEncoder:
        return load_sentence_encoder(self.best_dir).to(device)

    def best_info(self) -> dict:
        return json.loads((self.best_dir / "csetrain.json").read_text())
