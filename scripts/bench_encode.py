"""Encoding speed of an exported model on this CPU: PyTorch vs ONNX (fp32) vs ONNX int8, side
by side, and what int8 costs in STS-B test score.

FOLDER is a `csetrain export RUN --format onnx --int8` folder (onnx/model.onnx and
onnx/model_qint8.onnx beside the sentence-transformers files). All three run csetrain's
`encode` (the same tokenizer, length-sorted batches, pooling and cut in PyTorch), so only the
transformer differs: PyTorch eager, onnxruntime fp32, onnxruntime int8 (dynamic quantisation).
Sentences: the first N distinct STS-B test sentences of the data dir (the bundled sample's by
default). Each variant encodes them once to warm up, then `--repeats` times; the best time
counts (the least disturbed by other load on a shared machine). Scores: STS-B test, SentEval
protocol, Spearman x100, on all pairs.

    python scripts/bench_encode.py FOLDER [--sentences 1500] [--batch-size 64] [--threads 2]
        [--repeats 2] [--data-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import best_rate, print_table  # noqa: E402


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--sentences", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default=None, help="default: the bundled sample")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def encoders(folder: Path, threads: int) -> dict:
    from csetrain.modeling.export import load_sentence_encoder
    from csetrain.modeling.onnx_export import INT8_FILE, load_onnx_encoder

    return {
        "pytorch fp32": load_sentence_encoder(folder).eval(),
        "onnx fp32": load_onnx_encoder(folder, threads=threads),
        "onnx int8": load_onnx_encoder(folder, INT8_FILE, threads=threads),
    }


def sentences(data_dir: str, n: int) -> list[str]:
    from csetrain.eval.sts import load_task

    (pairs,) = load_task(Path(data_dir), "stsb", "test", "senteval")
    return list(dict.fromkeys([*pairs.first, *pairs.second]))[:n]


def main(argv=None) -> None:
    args = parse(argv)
    import torch
    import transformers

    from csetrain.config import ASSETS_DIR

    transformers.utils.logging.disable_progress_bar()
    from csetrain.eval.sts import STSEvaluator

    torch.set_num_threads(args.threads)
    data_dir = args.data_dir or str(ASSETS_DIR / "sample")
    texts = sentences(data_dir, args.sentences)
    evaluator = STSEvaluator(["stsb"], "test", "senteval", data_dir, batch_size=args.batch_size)
    results = {}
    for name, encoder in encoders(args.folder, args.threads).items():
        encode = partial(encoder.encode, texts, batch_size=args.batch_size)
        rate = best_rate(encode, len(texts), args.repeats)
        score = evaluator(encoder).metrics["senteval/stsb/spearman"]
        results[name] = {"sentences_per_s": rate, "stsb_test_spearman": score}
    base = results["pytorch fp32"]["sentences_per_s"]
    if args.json:
        print(json.dumps(results))
        return
    print(
        f"{len(texts)} STS-B test sentences, batch {args.batch_size}, {args.threads} threads, "
        f"best of {args.repeats} (measured under load: a shared CPU)"
    )
    rows = {
        name: (
            f"{r['sentences_per_s']:.1f}",
            f"{r['sentences_per_s'] / base:.2f}x",
            f"{r['stsb_test_spearman']:.2f}",
        )
        for name, r in results.items()
    }
    print_table(("sentences/s", "vs pytorch", "STS-B test (SentEval)"), rows)
    cost = results["onnx int8"]["stsb_test_spearman"] - results["onnx fp32"]["stsb_test_spearman"]
    print(f"int8 score cost: {cost:+.2f} Spearman x100 (int8 - fp32)")


if __name__ == "__main__":
    main()
