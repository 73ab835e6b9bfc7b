"""STS7 evaluation: csetrain's STSEvaluator vs the mteb library, same model, same data, offline.

Both score all-MiniLM-L6-v2 (packaged, mean pooling) on STS12-16, STS-B test and SICK-R in
MTEB's protocol: cosine similarity, Spearman x100, STS12-16 over each year's concatenated
subsets, SICK-R over all 9,927 pairs.

- csetrain: `STSEvaluator(tasks, "test", "mteb", data_dir)` on `SentenceEncoder(minilm_l6(),
  pooler="mean")` (each distinct sentence encoded once, batches sorted by token length).
- mteb: `mteb.evaluate(SentenceTransformer(minilm_dir()), tasks, cache=None, co2_tracker=False)`
  on mteb's own STS task objects, whose data is injected instead of downloaded
  (`task.dataset = {"default": DatasetDict({"test": ...})}`, `task.data_loaded = True`). This
  script reads the files itself (not through csetrain's loader): STS12-16 from `sts-senteval/`
  (the tokenized text MTEB's datasets hold), STS-B from raw `sts/stsb/test.tsv`, SICK-R from raw
  `sts/sickr/{train,dev,test}.tsv` pooled.

Each side runs in a fresh subprocess with `--threads` torch threads and the same encode batch
size. "eval s" is the evaluation call alone (encode + score); model and data loading are
reported apart. The time ratio is mteb eval s / csetrain eval s. Scores must agree within 0.01;
the script exits 1 if they do not.

    python scripts/bench_eval.py [--tasks sts12 ... sickr] [--batch-size 128] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from benchlib import child_ran, print_table, spawn  # scripts/ is on sys.path when run

# csetrain task -> mteb task name
TASKS = {
    "sts12": "STS12",
    "sts13": "STS13",
    "sts14": "STS14",
    "sts15": "STS15",
    "sts16": "STS16",
    "stsb": "STSBenchmark",
    "sickr": "SICK-R",
}
YEARS = ("sts12", "sts13", "sts14", "sts15", "sts16")
TOLERANCE = 0.01  # Spearman x100
VARIANTS = ("csetrain", "mteb")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--batch-size", type=int, default=128, help="encode batch size, both")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--data-dir", default=os.environ.get("CSETRAIN_DATA_DIR", ""))
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error(
            "set --data-dir or $CSETRAIN_DATA_DIR (the data pack with sts/, sts-senteval/)"
        )
    return args


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- csetrain -------------------------------------------------------------------------------


def metric_key(task: str) -> str:
    """csetrain's key for a task's main score ("all" setting for STS12-16)."""
    return f"mteb/{task}/" + ("spearman_all" if task in YEARS else "spearman")


def run_csetrain(args: argparse.Namespace) -> dict:
    from csetrain.eval.sts import STSEvaluator
    from csetrain.modeling.backbones import minilm_l6
    from csetrain.modeling.encoder import SentenceEncoder

    start = time.perf_counter()
    encoder = SentenceEncoder(minilm_l6(), pooler="mean")
    evaluator = STSEvaluator(args.tasks, "test", "mteb", args.data_dir, args.batch_size)
    loaded, cpu = time.perf_counter(), time.process_time()
    result = evaluator(encoder)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    return {
        "scores": {task: result.metrics[metric_key(task)] for task in args.tasks},
        "load_s": loaded - start,
        "eval_s": done - loaded,
        "eval_cpu_s": cpu,
        "sentences_encoded": len(evaluator.sentences()),
        "pairs": result.details["pairs"],
    }


# --- mteb -----------------------------------------------------------------------------------


def read_tsv(path: Path) -> tuple[list[str], list[str], list[float]]:
    """`score<TAB>sentence1<TAB>sentence2` with a header and no quoting."""
    rows = [line.rstrip("\n").split("\t") for line in path.open(encoding="utf-8")][1:]
    return [r[1] for r in rows], [r[2] for r in rows], [float(r[0]) for r in rows]


def task_files(root: Path, task: str) -> list[Path]:
    """The files whose pairs make one mteb test set."""
    if task in YEARS:
        return sorted((root / "sts-senteval" / task).glob("*.tsv"))
    if task == "sickr":
        return [root / "sts" / "sickr" / f"{split}.tsv" for split in ("train", "dev", "test")]
    return [root / "sts" / task / "test.tsv"]


def inject(mteb_task, files: list[Path]) -> int:
    """Give an mteb task its test set from local files, so it never reaches the hub."""
    from datasets import Dataset, DatasetDict

    first, second, score = [], [], []
    for path in files:
        a, b, s = read_tsv(path)
        first, second, score = first + a, second + b, score + s
    test = Dataset.from_dict({"sentence1": first, "sentence2": second, "score": score})
    mteb_task.dataset = {"default": DatasetDict({"test": test})}
    mteb_task.data_loaded = True
    return len(score)


def run_mteb(args: argparse.Namespace) -> dict:
    import mteb
    from sentence_transformers import SentenceTransformer

    from csetrain.modeling.backbones import minilm_dir

    start = time.perf_counter()
    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    tasks = {task: mteb.get_task(TASKS[task]) for task in args.tasks}
    pairs = {task: inject(tasks[task], task_files(Path(args.data_dir), task)) for task in tasks}
    loaded, cpu = time.perf_counter(), time.process_time()
    result = mteb.evaluate(
        model,
        list(tasks.values()),
        cache=None,  # no result cache: always evaluate, write nothing
        co2_tracker=False,
        show_progress_bar=False,
        encode_kwargs={"batch_size": args.batch_size, "show_progress_bar": False},
    )
    done, cpu = time.perf_counter(), time.process_time() - cpu
    main = {r.task_name: 100 * r.scores["test"][0]["cosine_spearman"] for r in result.task_results}
    return {
        "scores": {task: main[TASKS[task]] for task in args.tasks},
        "load_s": loaded - start,
        "eval_s": done - loaded,
        "eval_cpu_s": cpu,
        "sentences_encoded": 2 * sum(pairs.values()),  # mteb encodes both columns as given
        "pairs": pairs,
        "mteb_version": mteb.__version__,
    }


RUNNERS = {"csetrain": run_csetrain, "mteb": run_mteb}


# --- parent and child processes ---------------------------------------------------------------


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


def report_scores(ours: dict, theirs: dict, args: argparse.Namespace) -> bool:
    """Print the scores side by side; True if every task agrees within TOLERANCE."""
    print(
        f"{', '.join(args.tasks)}: all-MiniLM-L6-v2 (mean pooling), MTEB protocol, cosine Spearman x100; "
        f"mteb {theirs['mteb_version']}; encode batch {args.batch_size}, {args.threads} threads"
    )
    print(f"{'task':<8}{'pairs':>7}{'csetrain':>10}{'mteb':>10}{'diff':>10}")
    agree = True
    for task in args.tasks:
        a, b = ours["scores"][task], theirs["scores"][task]
        ok = abs(a - b) <= TOLERANCE
        agree &= ok
        flag = "" if ok else f"  > {TOLERANCE}"
        print(f"{task:<8}{theirs['pairs'][task]:>7}{a:>10.3f}{b:>10.3f}{a - b:>+10.4f}{flag}")
    mean = {
        side["variant"]: sum(side["scores"].values()) / len(args.tasks) for side in (ours, theirs)
    }
    print(f"{'avg':<8}{'':>7}{mean['csetrain']:>10.3f}{mean['mteb']:>10.3f}")
    print(f"scores {'agree' if agree else 'DISAGREE'} within {TOLERANCE}")
    return agree


def report_times(ours: dict, theirs: dict) -> None:
    columns = ("eval s", "eval CPU s", "load s", "process s", "sentences", "sent/s")
    columns += ("peak RSS MiB", "load")
    rows = {}
    for side in (ours, theirs):
        rows[side["variant"]] = (
            f"{side['eval_s']:.1f}",
            f"{side['eval_cpu_s']:.1f}",
            f"{side['load_s']:.1f}",
            f"{side['process_s']:.1f}",
            f"{side['sentences_encoded']}",
            f"{side['sentences_encoded'] / side['eval_s']:.0f}",
            f"{side['peak_rss_mib']:.0f}",
            f"{side['load_avg_1min']:.1f}",
        )
    print()
    print_table(columns, rows)
    print(
        f"time ratio mteb / csetrain: {theirs['eval_s'] / ours['eval_s']:.2f} (eval wall), "
        f"{theirs['eval_cpu_s'] / ours['eval_cpu_s']:.2f} (eval CPU), "
        f"{theirs['process_s'] / ours['process_s']:.2f} (whole process incl. imports and loading)"
    )
    print(
        "eval: the evaluation call (encode + score); eval CPU: process CPU seconds, all threads "
        "(steadier than wall time on a shared machine); load: model + data; sentences: texts "
        "encoded (csetrain: distinct ones; mteb: both columns of every pair); peak RSS: "
        "ru_maxrss of each side's own subprocess; load: 1-min load average at the end"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if child_ran(args, child, "mteb", "bench_eval.py"):
        return
    ours, theirs = (spawn(__file__, v, argv, args.threads) for v in VARIANTS)
    agree = report_scores(ours, theirs, args)
    report_times(ours, theirs)
    if args.json:
        print(
            json.dumps({"settings": vars(args), "csetrain": ours, "mteb": theirs, "agree": agree})
        )
    sys.exit(0 if agree else 1)


if __name__ == "__main__":
    main()
