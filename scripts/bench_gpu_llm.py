"""The LLM-embedder GPU case (< 5 min on one H200): a decoder with Qwen2-0.5B's shape built from
a config (random weights, no hub on the device), LoRA r 16 / alpha 32 / dropout 0.1 on every
linear layer, bidirectional attention, last-token pooling, bf16, batch 64 x length 128
(query and document views), GradCache off and on: tokens/s, model FLOP utilisation against the
GPU's dense bf16 peak, peak memory, and the largest batch that fits with GradCache.
Run by `scripts/bench_gpu.sh llm`; prints one JSON object per measurement.

FLOPs counted per token (the honest LoRA count, `mfu`): forward 2N + backward 2N through the
frozen weights (gradients w.r.t. activations only) + 6 x adapter parameters, N = non-embedding
parameters; plus attention, 12 x layers x hidden x length (QK^T and AV, forward and backward).
`mfu_6n` is the full-fine-tuning convention 6N (+ attention) for comparison with other reports.

    python scripts/bench_gpu_llm.py [--steps 20] [--batch 64] [--length 128] [--chunk 32]
    python scripts/bench_gpu_llm.py --dry-run      # CPU, a 2-layer config: checks the code path
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoModel

from csetrain.config import TrainerConfig
from csetrain.data.collate import Batch
from csetrain.grad_cache import GradCache
from csetrain.modeling.backbones import Backbone
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.objectives.simcse_unsup import SimCSEUnsup
from csetrain.runtime import Runtime

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's dense BF16 tensor-core peak for H200 SXM
# Qwen2-0.5B's config.json (hidden 896, 24 layers, 14 heads, 2 KV heads, 4864 MLP, 151936 vocab)
QWEN2_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
)
TINY = dict(QWEN2_05B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, vocab_size=1000)  # fmt: skip
LORA = {"r": 16, "alpha": 32, "dropout": 0.1, "target_modules": "all-linear"}


def qwen2_encoder(sizes: dict, device) -> SentenceEncoder:
    config = AutoConfig.for_model("qwen2", **sizes, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: seconds, not minutes, for 0.5B
        model = AutoModel.from_config(config, dtype=torch.bfloat16)
    backbone = Backbone(model, None, "qwen2-0.5b-config")  # random ids: no tokenizer needed
    return SentenceEncoder(backbone, pooler="last_token", attention="bidirectional", lora=LORA)


def random_batch(batch: int, length: int, vocab: int, device) -> Batch:
    """`batch` (query, document) pairs of `length` tokens each, all real (no padding)."""
    ids = torch.randint(10, vocab, (2 * batch, length))
    return Batch(ids.to(device), torch.ones_like(ids).to(device), ("anchor", "positive"), batch)


def flops_per_token(encoder: SentenceEncoder, length: int) -> tuple[float, float]:
    config = encoder.config
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    total = sum(p.numel() for p in encoder.transformer.parameters())
    frozen_matmul = total - trainable - config.vocab_size * config.hidden_size  # no embeddings
    attention = 12.0 * config.num_hidden_layers * config.hidden_size * length
    lora = 4.0 * frozen_matmul + 6.0 * trainable + attention
    return lora, 6.0 * (frozen_matmul + trainable) + attention


class Bench:
    def __init__(self, args) -> None:
        device = "cpu" if args.dry_run else "cuda"
        self.runtime = Runtime(TrainerConfig(device=device, precision="bf16", max_grad_norm=1.0))
        self.sizes = TINY if args.dry_run else QWEN2_05B
        self.encoder = self.runtime.prepare(qwen2_encoder(self.sizes, device), False)
        self.params = [p for p in self.encoder.parameters() if p.requires_grad]
        self.optimizer = self.runtime.optimizer(self.params, 2e-5, 0.0)
        self.cuda = device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, batch: int, length: int, steps: int, chunk: int = 0, warmup: int = 3):
        objective = SimCSEUnsup(temperature=0.02).to(self.runtime.device)
        if chunk:
            objective = GradCache(objective, chunk, self.runtime)
        data = random_batch(batch, length, self.sizes["vocab_size"], self.runtime.device)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

        def step():
            with self.runtime.autocast():
                out = objective(self.encoder, data)
            self.runtime.backward(out.loss)
            self.runtime.step(self.optimizer, self.params)

        for _ in range(warmup):
            step()
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        self.sync()
        seconds = (time.perf_counter() - start) / max(steps, 1)
        tokens = 2 * batch * length
        lora_flops, full_flops = flops_per_token(self.encoder, length)
        peak = H200_BF16_DENSE_TFLOPS * 1e12 * seconds
        return {
            "model": "qwen2-0.5b-shape" if self.sizes is QWEN2_05B else "tiny-qwen2 (dry run)",
            "lora_r": LORA["r"],
            "attention": "bidirectional",
            "precision": "bf16",
            "batch": batch,
            "length": length,
            "grad_cache_chunk": chunk,
            "steps_per_s": round(1 / seconds, 3),
            "tokens_per_s": round(tokens / seconds),
            "mfu": round(lora_flops * tokens / peak, 4),
            "mfu_6n": round(full_flops * tokens / peak, 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if self.cuda
            else None,
        }

    def largest_grad_cache_batch(self, length: int, chunk: int, start: int, limit: int) -> int:
        """Double the batch under GradCache until out of memory; the last size that ran."""
        fitted, batch = 0, start
        while batch <= limit:
            try:
                self.measure(batch, length, steps=1, chunk=chunk, warmup=0)
                fitted, batch = batch, batch * 2
            except torch.OutOfMemoryError:
                break
            finally:
                self.optimizer.zero_grad(set_to_none=True)
                if self.cuda:
                    torch.cuda.empty_cache()
        return fitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=32, help="GradCache chunk (rows)")
    parser.add_argument("--search-start", type=int, default=512)
    parser.add_argument("--search-limit", type=int, default=65536)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny config, 1 step each")
    args = parser.parse_args()
    if args.dry_run:
        args.steps, args.batch, args.length, args.chunk = 1, 4, 16, 2
        args.search_start, args.search_limit = 4, 8
    elif not torch.cuda.is_available():
        raise SystemExit("bench_gpu_llm.py needs a CUDA device (or --dry-run on CPU)")
    bench = Bench(args)
    device = torch.cuda.get_device_name() if bench.cuda else "cpu"
    print(json.dumps({"device": device, "torch": torch.__version__}), flush=True)
    for chunk in (0, args.chunk):
        print(json.dumps(bench.measure(args.batch, args.length, args.steps, chunk)), flush=True)
    fitted = bench.largest_grad_cache_batch(
        args.length, args.chunk, args.search_start, args.search_limit
    )
    record = {"largest_grad_cache_batch_bf16": fitted, "chunk": args.chunk, "length": args.length}
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
