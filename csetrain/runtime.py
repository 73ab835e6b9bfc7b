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
from csetrain.distributed import average_gradients, rank_and_world

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    import os

    if name == "auto":  # under torchrun each process takes its LOCAL_RANK's GPU
        index = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{index}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={name} but CUDA is not available: use trainer.device=cpu or auto"
        )
    return torch.device(name)


# glibc malloc's tunables (malloc.h): requests of at least M_MMAP_THRESHOLD bytes are mmap'ed and
# unmapped when freed; free space above M_TRIM_THRESHOLD at the top of a heap goes back to the OS.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its adaptive threshold (64-bit)
KEEP_TRIM_THRESHOLD = 256 << 20
_kept = False


def keep_freed_host_memory(device: torch.device) -> bool:
    """On a CPU, let glibc's malloc keep freed tensor buffers for reuse (at most 256 MiB of free
    space held); True if the setting is in effect. Process-wide; no-op off glibc or on a GPU.

    Why: each CPU forward allocates and frees activations of megabytes (MiniLM, 1,024 tokens:
    6 MiB per FFN output). glibc hands such buffers back to the OS (munmap, heap trim), so the
    next batch page-faults the same memory in again, zero-filled by the kernel: ~3,300 minor
    faults per SciFact abstract, ~8% of an encode's CPU time (2.6 of 28 s system time for 240
    abstracts; ~0.2 s with this setting). PyTorch's CPU tuning guide swaps in jemalloc/tcmalloc
    for the same reason; these two mallopt calls get the effect without an LD_PRELOAD. Setting
    them also stops glibc's adaptive thresholds, so both are set.
    """
    global _kept
    if device.type != "cpu" or _kept:
        return _kept
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    _kept = bool(
        libc.mallopt(M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD)
        and libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
    )
    return _kept


class Runtime:
    """Autocast, loss scaling and the optimizer step for one device/precision choice."""

    def __init__(self, cfg: TrainerConfig) -> None:
        self.device = pick_device(cfg.device)
        keep_freed_host_memory(self.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.dtype = DTYPES[cfg.precision]
        if self.dtype is torch.float16 and self.device.type != "cuda":
            raise ConfigError("trainer.precision=fp16 needs a GPU: use fp32 (or bf16) on CPU")
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype is torch.float16 else None
        self.max_grad_norm = cfg.max_grad_norm
        self.rank, self.world = rank_and_world()
        if cfg.batch_size % self.world:
            raise ConfigError(
                f"trainer.batch_size={cfg.batch_size} (global) must divide by the {self.world} processes"
            )

    def prepare(
        self, encoder: torch.nn.Module, compile_model: bool, packing: bool = False
    ) -> torch.nn.Module:
        """Move to the device; `trainer.compile` compiles the transformer in place (state-dict
        keys unchanged, so checkpoints and exports are the same as uncompiled);
        `trainer.packing` runs training forwards on packed rows (modeling/packing.py)."""
        encoder = encoder.to(self.device)
        encoder.packing = packing
        if compile_model:
            encoder.compile_backbone()
        return encoder

    def move(self, batch):
        """A host batch onto the device: pinned and non-blocking on CUDA (the copy overlaps the
        previous step's kernels); on CPU the batch is used as it is."""
        if self.device.type != "cuda":
            return batch
        return batch.pin_memory().to(self.device, non_blocking=True)

    def rng_state(self) -> torch.Tensor:
        """The state of the generator dropout draws from on this device."""
        if self.device.type == "cuda":
            return torch.cuda.get_rng_state(self.device)
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)

    def fork_rng(self):
        """A block whose random draws leave this device's (and the CPU's) generator as it was."""
        devices = [self.device] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, evaluates and saves."""
        return self.rank == 0

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params) -> torch.Tensor | None:
        """Unscale, clip, step, zero; returns the pre-clip gradient norm (a tensor: no sync)."""
        params = list(params)
        average_gradients(params)  # no-op on one process
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
        # Fused AdamW: one multi-tensor kernel (CPU since torch 2.4, CUDA) instead of the
        # per-tensor Python loop torch picks by default off CUDA. On MiniLM's 22.7M parameters
        # on a 2-core CPU: ~80 ms per step instead of ~480 ms (same updates to ~3e-8).
        fused = self.device.type in ("cpu", "cuda")
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


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op otherwise."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return rank_and_world()


def rng_states() -> dict:
    """Every RNG a training step draws from (torch CPU and each GPU, numpy, python), as a dict
    `torch.load(weights_only=True)` can read back (numpy's key array as a tensor)."""
    numpy_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` captured (GPU states only where there are GPUs)."""
    torch.set_rng_state(states["torch"])
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def free_memory() -> None:
    """Release what a finished run held (Python garbage, the GPU's cached blocks), so the next
    job of a multirun in the same process starts clean."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
