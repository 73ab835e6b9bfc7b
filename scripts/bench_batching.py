"""CPU inference batching: csetrain's encode with its padded-token cap vs without it vs
sentence-transformers' encode, same model, same batch size, side by side in one process.

Three text sets from the data pack span MTEB's lengths: Banking77 test queries (~15 tokens),
SummEval machine summaries (~75), SciFact abstracts (title + text, cut at 256). Each variant
encodes a set once to warm up, then `--repeats` times; the best time counts. The budget sweep
(`--budgets`) is what chose csetrain.modeling.batching.CPU_BATCH_TOKENS.

The "plain nn.Linear" / "oneDNN linears" variant switches the oneDNN prepacked linears
(modeling/onednn.py: on by default on AVX-512 CPUs only) and "one batch at a time" turns off the
CPU worker threads (modeling/batching.py: every forward split across
all threads instead), to show what each adds; `--dtype bf16` runs every variant, the peer
included, under bf16 autocast (where csetrain runs one batch at a time anyway).

    python scripts/bench_batching.py [--batch-size 128] [--threads 2] [--repeats 2]
        [--budgets 512 1024 2048 4096] [--dtype fp32|bf16] [--data-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import best_rate, print_table, switched  # noqa: E402


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budgets", type=int, nargs="*", default=[512, 1024, 2048, 4096])
    parser.add_argument("--per-set", type=int, default=600, help="texts per set")
    parser.add_argument("--data-dir", default=os.environ.get("CSETRAIN_DATA_DIR", ""))
    parser.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, every variant"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("set --data-dir or $CSETRAIN_DATA_DIR (the data pack with mteb/)")
    return args


def text_sets(data_dir: Path, n: int) -> dict[str, list[str]]:
    from csetrain.data.beir import read_corpus

    pack = data_dir / "mteb"
    lines = (pack / "Banking77Classification" / "test.jsonl").read_text().splitlines()
    queries = [json.loads(line)["text"] for line in lines]
    rows = (json.loads(line) for line in (pack / "SummEval" / "test.jsonl").open())
    summaries = [s for row in rows for s in row["machine_summaries"]]
    docs = list(read_corpus(pack / "SciFact")[0].values())  # title + text, as mteb embeds them
    sets = {"Banking77 queries": queries, "SummEval summaries": summaries, "SciFact docs": docs}
    return {name: list(dict.fromkeys(texts))[:n] for name, texts in sets.items()}


def variants(args) -> dict:
    from sentence_transformers import SentenceTransformer

    from csetrain.modeling import batching, onednn
    from csetrain.modeling.backbones import minilm_dir, minilm_l6
    from csetrain.modeling.encoder import SentenceEncoder

    ours = SentenceEncoder(minilm_l6(), pooler="mean", max_seq_length=256, normalize=True)
    peer = SentenceTransformer(str(minilm_dir()), device="cpu")
    bs = args.batch_size
    runs = {"sentence-transformers": lambda t: peer.encode(t, batch_size=bs)}
    runs["csetrain, no cap"] = lambda t: ours.encode(t, bs, batch_tokens=0)
    kernel = "plain nn.Linear" if onednn.ENABLED else "oneDNN linears"  # the non-default one
    runs[f"csetrain, 1024 tokens, {kernel}"] = partial(
        encode_switched, onednn, "ENABLED", not onednn.ENABLED, ours.encode, bs
    )
    runs["csetrain, 1024 tokens, one batch at a time"] = partial(
        encode_switched, batching, "MAX_CPU_WORKERS", 1, ours.encode, bs
    )
    for budget in args.budgets:
        runs[f"csetrain, {budget} tokens"] = lambda t, b=budget: ours.encode(t, bs, batch_tokens=b)
    return runs


def encode_switched(module, name: str, value, encode, batch_size: int, texts: list[str]):
    with switched(module, name, value):
        return encode(texts, batch_size)


def precision(dtype: str):
    """The context every variant runs in: float32 as is, or bf16 autocast (both sides alike)."""
    import torch

    return torch.autocast("cpu", torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def main(argv=None) -> None:
    args = parse(argv)
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    sets = text_sets(Path(args.data_dir), args.per_set)
    runs = variants(args)
    with precision(args.dtype):
        rates = {
            name: {s: best_rate(partial(run, t), len(t), args.repeats) for s, t in sets.items()}
            for name, run in runs.items()
        }
    if args.json:
        print(json.dumps({"settings": vars(args), "texts_per_s": rates}))
        return
    print(
        f"all-MiniLM-L6-v2 ({args.dtype}), 256-token cut, batch size {args.batch_size}, "
        f"{args.threads} threads, {args.per_set} distinct texts per set, best of "
        f"{args.repeats}; texts/s (x: vs ST)"
    )
    peer = rates["sentence-transformers"]
    rows = {
        name: tuple(f"{r[s]:.1f} ({r[s] / peer[s]:.2f}x)" for s in sets)
        for name, r in rates.items()
    }
    print_table(tuple(sets), rows)


if __name__ == "__main__":
    main()
