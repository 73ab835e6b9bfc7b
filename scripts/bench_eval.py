"""MTEB data pack, all 12 tasks: csetrain's eval=mteb vs the mteb library, same model, offline.

Both score all-MiniLM-L6-v2 (packaged; mean pooling, 256-token truncation and unit length, as its folder says)
on the seven STS tasks and the pack's five others (Banking77, Emotion, AmazonCounterfactual en,
SciFact, SummEval; SummEval also as SummEvalSummarization.v2, the corrected semantics) with
MTEB(eng, v1)'s task definitions, through mteb's own evaluators:

- csetrain: `MTEBEvaluator(tasks)` (what `csetrain eval model=minilm-l6 eval=mteb` runs) on
  `SentenceEncoder(minilm_l6(), pooler="mean", max_seq_length=256, normalize=True)`: every distinct text is
  encoded once per run (across columns, splits and tasks), in token-length-sorted batches.
- mteb: `mteb.evaluate(SentenceTransformer(minilm_dir()), tasks, cache=None, co2_tracker=False)`,
  mteb's own wrapper around sentence-transformers (each encode call sorted by characters).

Both sides get the same data injected into mteb's task objects (`csetrain.eval.mteb.mteb_task`:
what mteb's own `load_data` would hold; the data itself is checked against MTEB's published
numbers, printed beside both sides); csetrain's evaluator then formats its classification
datasets for whole-array column reads (`with_array_columns`), and the csetrain process keeps
freed host memory for reuse (`runtime.keep_freed_host_memory`), both as `csetrain eval` does.
Each side runs in a fresh subprocess with `--threads` torch threads and the same encode batch
size. "eval s" is the evaluate call alone (encode + score), with mteb and sentence-transformers
imported before the clock starts on both sides (mteb.evaluate imports sentence-transformers on
its first call; the mteb side needs it to load its model); model and data loading are reported
apart; per-task seconds are mteb's own `evaluation_time`. Scores must agree within 0.05 (×100);
the script exits 1 if they do not.

    python scripts/bench_eval.py [--tasks STS12 ... SummEval] [--batch-size 128] [--threads 2]
                                 [--max-rows N] [--cache-dir EMPTY_DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from benchlib import (  # scripts/ is on sys.path when run
    child_ran,
    gemm_peak_gflops,
    print_table,
    spawn,
    transformer_flops,
)

from csetrain.eval.mteb import DEFAULT_TASKS
from csetrain.eval.mteb_data import published_minilm_scores

TOLERANCE = 0.05  # x100: the issue's +-0.0005; SummEval's near-tied cosines move by float noise
VARIANTS = ("csetrain", "mteb")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=DEFAULT_TASKS, default=DEFAULT_TASKS)
    parser.add_argument("--batch-size", type=int, default=128, help="encode batch size, both")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--max-rows", type=int, help="first N rows per split (a smoke run)")
    parser.add_argument(
        "--cache-dir",
        help="csetrain side: also save its results in this mteb result cache (an EMPTY folder: "
        "a filled one would be read back and time nothing), e.g. for `csetrain eval "
        "eval.cache_dir=...` to show the same numbers",
    )
    parser.add_argument("--data-dir", default=os.environ.get("CSETRAIN_DATA_DIR", ""))
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("set --data-dir or $CSETRAIN_DATA_DIR (the data pack with sts/, mteb/)")
    return args


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_csetrain(args: argparse.Namespace) -> dict:
    import mteb  # noqa: F401  (imported before the clock, as on the mteb side)
    import sentence_transformers  # noqa: F401  (mteb.evaluate's first call imports it)
    import torch

    from csetrain.eval.mteb import MTEBEvaluator
    from csetrain.modeling.backbones import minilm_l6
    from csetrain.modeling.encoder import SentenceEncoder
    from csetrain.runtime import keep_freed_host_memory

    keep_freed_host_memory(torch.device("cpu"))  # as `csetrain eval` does on a CPU
    start = time.perf_counter()
    encoder = SentenceEncoder(minilm_l6(), pooler="mean", max_seq_length=256, normalize=True)
    evaluator = MTEBEvaluator(
        args.tasks,
        args.data_dir,
        batch_size=args.batch_size,
        max_rows=args.max_rows,
        cache_dir=args.cache_dir,
    )
    encoded = record_texts(encoder)
    loaded, cpu = time.perf_counter(), time.process_time()
    result = evaluator(encoder)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    ids = encoder.tokenizer(encoded, truncation=True, max_length=encoder.max_length)["input_ids"]
    return {
        "scores": {t: result.metrics[f"mteb/{t}/main_score"] for t in args.tasks},
        "task_s": {t: result.details["tasks"][t]["evaluation_time_s"] for t in args.tasks},
        "load_s": loaded - start,
        "eval_s": done - loaded,
        "eval_cpu_s": cpu,
        "encode_s": result.details["encode_s"],
        "encode_tflop": transformer_flops(list(map(len, ids)), encoder.config) / 1e12,
        "gemm_peak_gflops": gemm_peak_gflops(encoder.hidden_size, encoder.config.intermediate_size),
        "texts_encoded": result.details["texts_encoded"],
        "mteb_version": result.details["mteb_version"],
    }


def record_texts(encoder) -> list[str]:
    """The texts `encoder.encode` is given from now on (a list it fills; timing unaffected)."""
    texts, encode = [], encoder.encode

    def recording(sentences, *args, **kwargs):
        texts.extend(sentences)
        return encode(sentences, *args, **kwargs)

    encoder.encode = recording
    return texts


def run_mteb(args: argparse.Namespace) -> dict:
    import warnings

    import mteb
    from sentence_transformers import SentenceTransformer

    from csetrain.eval.mteb import MTEBEvaluator, leaderboard_filters, mteb_task
    from csetrain.modeling.backbones import minilm_dir

    start = time.perf_counter()
    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    data = MTEBEvaluator(args.tasks, args.data_dir, max_rows=args.max_rows).data
    tasks = [mteb_task(t, data[t], leaderboard_filters()) for t in args.tasks]
    loaded, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*failed to converge.*")
        result = mteb.evaluate(
            model,
            tasks,
            cache=None,  # no result cache: always evaluate, write nothing
            co2_tracker=False,
            show_progress_bar=False,
            encode_kwargs={"batch_size": args.batch_size, "show_progress_bar": False},
        )
    done, cpu = time.perf_counter(), time.process_time() - cpu
    results = {r.task_name: r for r in result.task_results}
    return {
        "scores": {t: 100 * results[t].get_score() for t in args.tasks},
        "task_s": {t: results[t].evaluation_time for t in args.tasks},
        "load_s": loaded - start,
        "eval_s": done - loaded,
        "eval_cpu_s": cpu,
        "mteb_version": mteb.__version__,
    }


RUNNERS = {"csetrain": run_csetrain, "mteb": run_mteb}


def child(args: argparse.Namespace) -> None:
    """Run one side and print its measurements as the last line of stdout."""
    born = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    result = RUNNERS[args.variant](args)
    result.update(
        variant=args.variant,
        process_s=time.perf_counter() - born,
        peak_rss_mib=peak_rss_mib(),
        load_avg_1min=os.getloadavg()[0],
    )
    print(json.dumps(result))


def report_scores(ours: dict, theirs: dict, paper: dict, args: argparse.Namespace) -> bool:
    """Scores side by side with the published ones; True if the two sides agree."""
    print(
        f"all-MiniLM-L6-v2 (mean pooling, 256 tokens), MTEB(eng, v1) task definitions, main score "
        f"x100; mteb {theirs['mteb_version']}; batch {args.batch_size}, {args.threads} threads"
        + (f"; FIRST {args.max_rows} ROWS ONLY" if args.max_rows else "")
    )
    header = (
        f"{'task':<36}{'published':>10}{'csetrain':>10}{'mteb':>10}{'cse-pub':>9}{'cse-mteb':>9}"
    )
    print(header + f"{'cse s':>8}{'mteb s':>8}")
    agree = True
    for task in args.tasks:
        a, b, p = ours["scores"][task], theirs["scores"][task], paper.get(task, float("nan"))
        agree &= abs(a - b) <= TOLERANCE
        times = f"{ours['task_s'][task]:>8.1f}{theirs['task_s'][task]:>8.1f}"
        print(f"{task:<36}{p:>10.4f}{a:>10.4f}{b:>10.4f}{a - p:>+9.4f}{a - b:>+9.4f}{times}")
    print(f"scores {'agree' if agree else 'DISAGREE'} within {TOLERANCE} (csetrain vs mteb)")
    return agree


def report_times(ours: dict, theirs: dict) -> None:
    columns = ("eval s", "eval CPU s", "load s", "process s", "peak RSS MiB", "load")
    rows = {
        side["variant"]: (
            f"{side['eval_s']:.1f}",
            f"{side['eval_cpu_s']:.1f}",
            f"{side['load_s']:.1f}",
            f"{side['process_s']:.1f}",
            f"{side['peak_rss_mib']:.0f}",
            f"{side['load_avg_1min']:.1f}",
        )
        for side in (ours, theirs)
    }
    print()
    print_table(columns, rows)
    print(
        f"time ratio mteb / csetrain: {theirs['eval_s'] / ours['eval_s']:.2f} (eval wall), "
        f"{theirs['eval_cpu_s'] / ours['eval_cpu_s']:.2f} (eval CPU), "
        f"{theirs['process_s'] / ours['process_s']:.2f} (whole process); csetrain encoded "
        f"{ours['texts_encoded']} distinct texts"
    )
    print(
        "eval: the evaluate call (encode + score); eval CPU: process CPU seconds, all threads; "
        "load: model + data; cse s / mteb s: mteb's evaluation_time per task (csetrain's first "
        "task that meets a text pays for encoding it); load: 1-min load average at the end"
    )
    report_roofline(ours, theirs)


def report_roofline(ours: dict, theirs: dict) -> None:
    """How far any float32 implementation could go here: csetrain's transformer arithmetic at
    this machine's best GEMM rate, plus the rest of its time (mteb's own evaluators and task
    setup, which a faster encoder does not touch)."""
    peak, flop = ours["gemm_peak_gflops"], ours["encode_tflop"] * 1e12
    rest = ours["eval_s"] - ours["encode_s"]
    floor = flop / (peak * 1e9) + rest
    print(
        f"\nfp32 roofline (csetrain side): encode {ours['encode_s']:.1f} s + the rest (mteb's "
        f"scoring, task setup) {rest:.1f} s; {ours['encode_tflop']:.1f} TFLOP of transformer "
        f"arithmetic at "
        f"{flop / ours['encode_s'] / 1e9:.0f} GFLOP/s vs this machine's best fp32 GEMM rate "
        f"{peak:.0f} GFLOP/s. At that rate throughout: {floor:.1f} s, so mteb / csetrain could "
        f"reach at most {theirs['eval_s'] / floor:.2f} here (no padding, no overhead)"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if child_ran(args, child, "mteb", "bench_eval.py"):
        return
    ours, theirs = (spawn(__file__, v, argv, args.threads) for v in VARIANTS)
    paper = published_minilm_scores(Path(args.data_dir))
    agree = report_scores(ours, theirs, paper, args)
    report_times(ours, theirs)
    if args.json:
        print(
            json.dumps(
                {
                    "settings": vars(args),
                    "published": paper,
                    "csetrain": ours,
                    "mteb": theirs,
                    "agree": agree,
                }
            )
        )
    sys.exit(0 if agree else 1)


if __name__ == "__main__":
    main()
