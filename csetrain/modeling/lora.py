"""LoRA (Hu et al. 2021) and DoRA (Liu et al. 2024) adapters on the backbone, through `peft`.

`model.lora: {r, alpha, dropout, target_modules, dora, save_adapter}` wraps the transformer in a
peft model: its own weights are frozen and only the adapters train, beside the pooler and head,
which stay trainable (they are not part of the transformer). This is the only module that
imports peft (tests/test_layout.py).

- Checkpoints for exact resume hold the trainable tensors only (`trainable_state`): the frozen
  base is rebuilt from its source when the run resumes, so a 7B model's resume state is the
  adapters' few megabytes. Loading checks that every tensor left out is a frozen one.
- Export merges the adapters into a copy of the weights (W + B A * alpha / r), so the
  sentence-transformers folder is a plain transformer; `save_adapter: true` also writes the
  adapter alone (peft's adapter_config.json + adapter_model.safetensors) under `adapter/`.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import Tensor, nn

from csetrain.config import ConfigError

LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "dora", "save_adapter")
ADAPTER_DIR = "adapter"


def lora_config(settings: dict):
    """peft's LoraConfig from `model.lora` (unknown keys and bad values: one line each)."""
    from peft import LoraConfig

    unknown = sorted(set(settings) - set(LORA_KEYS))
    if unknown:
        raise ConfigError(f"model.lora has unknown keys {unknown}: use {list(LORA_KEYS)}")
    r = settings.get("r", 8)
    if not isinstance(r, int) or r < 1:
        raise ConfigError(f"model.lora.r={r}: the adapter rank must be a positive integer")
    dropout = settings.get("dropout", 0.0)
    if not 0 <= dropout < 1:
        raise ConfigError(f"model.lora.dropout={dropout}: choose a probability in [0, 1)")
    targets = settings.get("target_modules") or "all-linear"
    return LoraConfig(
        r=r,
        lora_alpha=settings.get("alpha", 2 * r),
        lora_dropout=dropout,
        target_modules=list(targets) if not isinstance(targets, str) else targets,
        use_dora=bool(settings.get("dora", False)),
        bias="none",
    )


def add_lora(transformer: nn.Module, settings: dict | None) -> nn.Module:
    """The transformer wrapped with adapters, its own weights frozen (no settings: as it is)."""
    if not settings:
        return transformer
    from peft import get_peft_model

    config = lora_config(dict(settings))
    try:
        model = get_peft_model(transformer, config)
    except ValueError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise ConfigError(
            f"model.lora.target_modules={config.target_modules}: {first}; name linear layers of "
            f"{type(transformer).__name__} (e.g. [q_proj, v_proj]) or all-linear"
        ) from None
    model.csetrain_save_adapter = bool(settings.get("save_adapter", False))
    return model


def has_lora(transformer: nn.Module) -> bool:
    try:  # peft is an optional extra: without it nothing has adapters
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(transformer, PeftModel)


def merged(transformer: nn.Module) -> nn.Module:
    """A plain transformer with the adapters folded into its weights (the original untouched)."""
    return copy.deepcopy(transformer).merge_and_unload()


def save_adapter(transformer: nn.Module, folder: Path) -> None:
    """The adapter alone, in peft's format, if `model.lora.save_adapter` asked for it."""
    if getattr(transformer, "csetrain_save_adapter", False):
        transformer.save_pretrained(str(folder / ADAPTER_DIR), safe_serialization=True)


def trainable_state(module: nn.Module) -> dict[str, Tensor]:
    """The state to checkpoint for resume: every tensor but the frozen base weights of a
    LoRA-wrapped transformer (all of it without adapters)."""
    frozen = frozen_keys(module)
    return {k: v for k, v in module.state_dict().items() if k not in frozen}


def frozen_keys(module: nn.Module) -> set[str]:
    """State-dict keys of frozen base weights under a peft wrapper (rebuilt at resume)."""
    keys: set[str] = set()
    for name, child in module.named_modules():
        if not has_lora(child):
            continue
        prefix = f"{name}." if name else ""
        keys |= {
            prefix + k
            for k, p in child.named_parameters()
            if not p.requires_grad and "lora_" not in k
        }
    return keys


def load_trainable_state(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Load what `trainable_state` saved; anything missing must be a frozen base weight."""
    result = module.load_state_dict(tensors, strict=False)
    missing = set(result.missing_keys) - frozen_keys(module)
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"resume state does not match the model ({len(missing)} missing, "
            f"{len(result.unexpected_keys)} unexpected tensors, e.g. "
            f"{sorted(missing | set(result.unexpected_keys))[:2]}): resume with the run's config"
        )
