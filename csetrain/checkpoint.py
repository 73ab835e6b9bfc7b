"""Disk layout of a run and atomic writes: a crash or kill never leaves a half-written model
where a complete one is expected.

    <run_dir>/checkpoints/best/   the selected model, a sentence-transformers folder
    <run_dir>/checkpoints/last/   full training state for exact resume (deleted when the run ends)
        encoder.safetensors, objective.safetensors   weights (safetensors: no pickles)
        trainer_state.pt   optimizer, scheduler, RNG states, step, selection history (read with
                           torch.load(weights_only=True))
        meta.json          step, config hash, MLflow run id (cheap to scan for trainer.resume=auto)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from csetrain.config import ConfigError
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer
from csetrain.modeling.lora import load_trainable_state, trainable_state
from csetrain.runtime import rng_states, set_rng_states


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


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What resume needs of `module`: all its state, less the frozen base under LoRA adapters."""
    return {k: v.detach().cpu().contiguous() for k, v in trainable_state(module).items()}


class Checkpointer:
    """Keeps the best model (by dev metric) and the latest full training state of a run."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.best_dir = self.root / "best"
        self.last_dir = self.root / "last"

    def _fresh_dir(self, prefix: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.root, prefix=prefix))

    def save_best(self, encoder: SentenceEncoder, step: int, metric_key: str, value: float) -> Path:
        tmp = self._fresh_dir(".best-")
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

    def save_state(
        self, step: int, encoder, objective, optimizer, scheduler, progress: dict, meta: dict
    ) -> None:
        """Everything needed to continue bit-for-bit from after `step`."""
        tmp = self._fresh_dir(".last-")
        save_file(_tensors(encoder), str(tmp / "encoder.safetensors"))
        save_file(_tensors(objective), str(tmp / "objective.safetensors"))
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_states(),
            "progress": progress,
        }
        torch.save(state, tmp / "trainer_state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}))
        replace_dir(tmp, self.last_dir)

    def load_state(self, encoder, objective, optimizer, scheduler) -> tuple[int, dict]:
        """Restore weights, optimizer, scheduler and RNG from `last/`; returns (step, progress)."""
        try:
            load_trainable_state(encoder, load_file(str(self.last_dir / "encoder.safetensors")))
            load_trainable_state(objective, load_file(str(self.last_dir / "objective.safetensors")))
            state = torch.load(self.last_dir / "trainer_state.pt", weights_only=True)
        except Exception as err:  # truncated or foreign files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"checkpoint {self.last_dir} is corrupt ({first}); delete it or set trainer.resume=never"
            ) from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])
        return state["step"], state["progress"]

    def meta(self) -> dict | None:
        """The resume state's meta.json, None if there is no resume state; a corrupt one (cut
        short, not an object) is an error, as a corrupt state file is, never a fresh start."""
        path = self.last_dir / "meta.json"
        return read_meta(path) if path.is_file() else None

    def discard_state(self) -> None:
        """The run ended: its resume state is no longer needed (the best model stays)."""
        shutil.rmtree(self.last_dir, ignore_errors=True)


def find_resumable(output_dir: str | Path, wanted_hash: str) -> Path | None:
    """The most recent unfinished run under `output_dir` with the same config hash."""
    candidates = []
    for meta_file in Path(output_dir).glob("**/checkpoints/last/meta.json"):
        meta = read_meta(meta_file)
        if meta.get("config_hash") == wanted_hash:
            candidates.append((meta_file.stat().st_mtime, meta_file.parents[2]))
    return max(candidates)[1] if candidates else None


def read_meta(path: Path) -> dict:
    """A resume state's meta.json; one that does not parse to an object is a ConfigError."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        meta = None
    else:
        reason = f"holds a {type(meta).__name__}, not an object"
    if not isinstance(meta, dict):
        raise ConfigError(
            f"checkpoint {path.parent} is corrupt (meta.json: {reason}); delete it or set trainer.resume=never"
        )
    return meta
