"""Shared by scripts/bench_*.py: run a variant in a fresh interpreter, print a results table."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def child_ran(args, child, needs: str, script: str) -> bool:
    """In a variant's own subprocess (`--variant`), run it and say so; in the parent, fail in
    one line if the peer library `needs` is missing."""
    if args.variant:
        child(args)
        return True
    import importlib.util

    if importlib.util.find_spec(needs) is None:
        raise SystemExit(f"{script} needs {needs}: pip install -e '.[bench]'")
    return False


def spawn(
    script: str, variant: str, argv: list[str], threads: int, extra_env: dict | None = None
) -> dict:
    """Run `script --variant variant` in a fresh interpreter (own imports, threads and peak
    memory); returns the JSON object on its last stdout line; stderr is shown only on failure."""
    env = {**os.environ, **OFFLINE_ENV, **(extra_env or {})}
    env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, script, *argv, "--variant", variant],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"variant {variant} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def print_table(columns: tuple[str, ...], rows: dict[str, tuple[str, ...]]) -> None:
    """Right-aligned columns, each as wide as its widest cell."""
    first = max(map(len, rows)) + 2
    widths = [max(len(c), *(len(r[i]) for r in rows.values())) + 2 for i, c in enumerate(columns)]
    print(" " * first + "".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
    for name, cells in rows.items():
        print(f"{name:<{first}}" + "".join(f"{v:>{w}}" for v, w in zip(cells, widths)))


def best_rate(run, items: int, repeats: int) -> float:
    """`items` per second of `run()`, best of `repeats` timed calls after one warm-up call (the
    least disturbed by other load on a shared machine)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return items / best


def transformer_flops(lengths: list[int], config) -> float:
    """Multiply-add FLOPs (2 per MAC) of a BERT-style encoder forward over sequences of these
    token lengths: per layer the Q, K, V, output and two FFN projections (2 l (4 h^2 + 2 h f))
    plus attention scores and their weighted sum (4 l^2 h); embeddings and norms left out."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return float(sum(layers * (2 * n * (4 * h * h + 2 * h * f) + 4 * n * n * h) for n in lengths))


def gemm_peak_gflops(hidden: int, intermediate: int, rows: int = 1024, calls: int = 30) -> float:
    """This machine's best float32 rate for one FFN-shaped product (rows x hidden) . (hidden x
    intermediate): the better of PyTorch's nn.Linear and csetrain's oneDNN prepacked one
    (modeling/onednn.py), the kernels an encoder can use here; the ceiling its arithmetic could
    run at."""
    import torch

    from csetrain.modeling import onednn

    layer, x = torch.nn.Linear(hidden, intermediate, bias=False), torch.randn(rows, hidden)
    flops = 2 * rows * hidden * intermediate * calls

    def products():
        for _ in range(calls):
            layer(x)

    with torch.no_grad():
        plain = best_rate(products, flops, 3)
        # measured even where it is off by default (onednn.py)
        with switched(onednn, "ENABLED", True), onednn.prepacked_linears(layer):
            packed = best_rate(products, flops, 3)
    return max(plain, packed) / 1e9


@contextlib.contextmanager
def switched(module, name: str, value):
    """`module.name = value` inside the block: one of csetrain's choices switched for a variant."""
    default = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, default)
