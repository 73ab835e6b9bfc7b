"""Devices, precision, seeding and threads: the one home of hardware side effects, so research
code never branches on `cuda`."""

from __future__ import annotations

import contextlib
import random
import signal
import threading

import numpy as np
import torch

from csetrain.config import ConfigError, TrainerConfig

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={name} but CUDA is not available: use trainer.device=cpu or auto"
        )
    return torch.device(name)


class Runtime:
    """Autocast, loss scaling and the optimizer step for one device/precision choice."""

    def __init__(self, cfg: TrainerConfig) -> None:
        self.device = pick_device(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.dtype = DTYPES[cfg.precision]
        if self.dtype is torch.float16 and self.device.type != "cuda":
            raise ConfigError("trainer.precision=fp16 needs a GPU: use fp32 (or bf16) on CPU")
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype is torch.float16 else None
        self.max_grad_norm = cfg.max_grad_norm

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params) -> torch.Tensor | None:
        """Unscale, clip, step, zero; returns the pre-clip gradient norm (a tensor: no sync)."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        norm = (
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            if self.max_grad_norm > 0
            else None
        )
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def optimizer(self, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        fused = self.device.type == "cuda"  # fused AdamW is a GPU kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def lr_lambda(schedule: str, warmup: int, total: int):
    """Linear warmup, then linear decay to 0 at `total` (HF's get_linear_schedule_with_warmup),
    or constant after warmup."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return step / warmup
        if schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class StopRequest:
    """Set by SIGTERM/SIGINT; the loop polls it between steps."""

    signal: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


@contextlib.contextmanager
def stop_requests():
    """Turn SIGTERM/SIGINT into a polite request to stop after the current step (main thread
    only: elsewhere, e.g. under a launcher thread, signals keep their default behaviour)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        request.signal = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
