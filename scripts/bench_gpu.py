"""One prepared GPU measurement (< 5 min on one H200): unsupervised SimCSE steps/s and tokens/s
at batch 64 x length 32 on a BERT-base-sized encoder built from a config (no hub on the device),
eager fp32 vs bf16 vs bf16 + torch.compile; model FLOP utilisation; peak memory; the largest
GradCache batch that fits. Run by scripts/bench_gpu.sh; prints one JSON object per measurement.

Everything goes through csetrain's own pieces (SentenceEncoder, SimCSEUnsup, Runtime, GradCache)
so the numbers are the tool's, not a toy loop's.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import BertConfig, BertModel

from csetrain.config import TrainerConfig
from csetrain.data.collate import Batch
from csetrain.grad_cache import GradCache
from csetrain.modeling.backbones import Backbone
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.objectives.simcse_unsup import SimCSEUnsup
from csetrain.runtime import Runtime

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's dense BF16 tensor-core peak for H200 SXM


def bert_base(device) -> SentenceEncoder:
    config = BertConfig(attn_implementation="sdpa")  # bert-base: 12 x 768, 110M parameters
    torch.manual_seed(0)
    # no tokenizer: the batches are random token ids (the device has no csetrain data or vocab)
    backbone = Backbone(BertModel(config, add_pooling_layer=False), None, "bert-base-config")
    return SentenceEncoder(backbone, pooler="cls", mlp_head="train_only").to(device)


def random_batch(batch: int, length: int, device) -> Batch:
    """Two identical views of `batch` sentences of `length` tokens (dropout is the noise)."""
    ids = torch.randint(1000, 30000, (batch, length))
    ids[:, 0], ids[:, -1] = 101, 102
    both = torch.cat([ids, ids])
    return Batch(both.to(device), torch.ones_like(both).to(device), ("anchor", "positive"), batch)


def train_flops(encoder: SentenceEncoder, tokens: int) -> float:
    """6 x parameters x tokens (forward + backward) plus attention's 12 x layers x hidden x L^2-ish
    term, dropped here: at length 32 it is < 2% of the total."""
    params = sum(p.numel() for p in encoder.transformer.parameters())
    return 6.0 * params * tokens


def measure(
    precision: str, compile_model: bool, batch: int, length: int, steps: int, chunk: int = 0
) -> dict:
    cfg = TrainerConfig(
        device="cuda", precision=precision, compile=compile_model, max_grad_norm=1.0
    )
    runtime = Runtime(cfg)
    encoder = runtime.prepare(bert_base(runtime.device), compile_model)
    objective = SimCSEUnsup().to(runtime.device)
    if chunk:
        objective = GradCache(objective, chunk, runtime)
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = runtime.optimizer(params, 3e-5, 0.0)
    data = random_batch(batch, length, runtime.device)
    torch.cuda.reset_peak_memory_stats()

    def step():
        with runtime.autocast():
            out = objective(encoder, data)
        runtime.backward(out.loss)
        runtime.step(optimizer, params)

    for _ in range(5 if not compile_model else 10):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    tokens = 2 * batch * length
    return {
        "precision": precision,
        "compile": compile_model,
        "batch": batch,
        "length": length,
        "grad_cache_chunk": chunk,
        "steps_per_s": round(1 / seconds, 2),
        "tokens_per_s": round(tokens / seconds),
        "mfu_vs_bf16_peak": round(
            train_flops(encoder, tokens) / seconds / (H200_BF16_DENSE_TFLOPS * 1e12), 4
        ),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def largest_grad_cache_batch(
    length: int, chunk: int, start: int = 4096, limit: int = 262144
) -> int:
    """Double the batch under GradCache (bf16) until out of memory; the last size that ran."""
    fitted, batch = 0, start
    while batch <= limit:
        try:
            measure("bf16", False, batch, length, steps=1, chunk=chunk)
            fitted, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return fitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--skip-grad-cache", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    print(
        json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True
    )
    for precision, compile_model in (("fp32", False), ("bf16", False), ("bf16", True)):
        print(
            json.dumps(measure(precision, compile_model, args.batch, args.length, args.steps)),
            flush=True,
        )
    if not args.skip_grad_cache:
        fitted = largest_grad_cache_batch(args.length, chunk=512)
        print(
            json.dumps(
                {"largest_grad_cache_batch_bf16": fitted, "chunk": 512, "length": args.length}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
