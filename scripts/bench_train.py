"""Training speed: csetrain's loop vs sentence-transformers' trainer vs a plain PyTorch loop.

All three run the same unsupervised-SimCSE recipe on the packaged all-MiniLM-L6-v2 (offline):
the first `batch_size * (warmup + steps)` lines of wiki/wiki1m_head.txt, batch 64, truncation at
32 tokens, the same sentence as anchor and positive (dropout is the only noise), InfoNCE over
cosine similarity with temperature 0.05 (= MultipleNegativesRankingLoss scale 20), AdamW at
lr 3e-5 with linear decay to 0, gradient clipping at 1.0, fp32 on CPU, `--threads` torch threads.

- csetrain: the config composed by csetrain's own Hydra entry point, built by
  `csetrain.app.train.build` and trained by `csetrain.loop.fit` (one forward pass over both views).
- sentence-transformers: `SentenceTransformerTrainer` + `MultipleNegativesRankingLoss` on
  `SentenceTransformer(minilm_dir())` (anchor and positive encoded in two forward passes).
- plain: tokenize each batch on the fly (dynamic padding), two forward passes, AdamW.

Each variant runs in a fresh subprocess, so imports, thread pools and peak memory are its own;
`--rounds N` runs them round-robin N times and keeps each variant's fastest round (on a shared
machine other processes only ever slow a round down; `round_medians` in --json shows them all).
A step is timed end to end (data, forward, backward, optimizer step): seconds/step is the median
of the gaps between consecutive step ends after `--warmup` untimed steps; sentences/s is
batch_size / that median (each sentence is encoded twice per step). Peak RSS is the child's
`resource.getrusage(RUSAGE_SELF).ru_maxrss` (the whole process: interpreter, libraries, model,
optimizer state, activations). Batches are drawn in each tool's own shuffled order from the same
sentences, so per-step padding differs a little between variants.

    python scripts/bench_train.py [--steps 8] [--warmup 2] [--rounds 1] [--batch-size 64]
                                  [--max-length 32] [--threads 2] [--pooler mean|cls] [--json]
                                  [--skip plain] [--tree LABEL=PATH ...]

`--model tiny-decoder` runs the same recipe on model=tiny_decoder instead (a random 2-layer
Llama-shaped decoder, hidden 32, bert-base-uncased WordPiece with [SEP] as EOS, init_seed 0,
attention dropout 0.1, causal attention, last-token pooling): csetrain builds it from its
option, sentence-transformers loads the same weights saved to a folder, with
Pooling(pooling_mode="lasttoken"); the plain loop is skipped (it is MiniLM-specific).

`--tree before=/tmp/wt` also times the csetrain of another checkout (`git worktree add /tmp/wt
<commit>`) in the same round-robin, so an optimisation's before/after is measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import child_ran, print_table, spawn  # scripts/ is on sys.path when run

VARIANTS = ("csetrain", "sentence-transformers", "plain")
BASELINE = "sentence-transformers"
LR, TEMPERATURE, MAX_GRAD_NORM, SEED = 3e-5, 0.05, 1.0, 42
CORPUS = "wiki/wiki1m_head.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per variant, round-robin")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=32, help="truncation in tokens")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--pooler", choices=("mean", "cls"), default="mean")
    parser.add_argument(
        "--model",
        choices=("minilm", "tiny-decoder"),
        default="minilm",
        help="minilm: all-MiniLM-L6-v2; tiny-decoder: model=tiny_decoder, last-token pooling",
    )
    parser.add_argument("--data-dir", default=os.environ.get("CSETRAIN_DATA_DIR", ""))
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=VARIANTS, help="variants not to run (not ST)"
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="also time csetrain from another checkout (e.g. a git worktree of an older commit), "
        "as variant csetrain@LABEL: before/after figures side by side in one run",
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("set --data-dir or $CSETRAIN_DATA_DIR (the data pack with wiki/)")
    return args


def total_steps(args: argparse.Namespace) -> int:
    return args.warmup + args.steps


def read_sentences(args: argparse.Namespace) -> list[str]:
    """The first batch_size * total_steps non-blank lines: every variant sees each once."""
    needed = args.batch_size * total_steps(args)
    path = Path(args.data_dir) / CORPUS
    lines = [s for s in (line.strip() for line in path.open(encoding="utf-8")) if s][:needed]
    if len(lines) < needed:
        raise SystemExit(f"{path} has {len(lines)} sentences; {needed} needed")
    return lines


def now() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    return time.perf_counter(), time.process_time()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def linear_decay(total: int):
    return lambda step: max(0.0, (total - step) / total)


# --- the three variants: each returns ([now() at start, after step 1, ...], mean loss) -------


def run_csetrain(args: argparse.Namespace, workdir: Path) -> tuple[list, float]:
    """csetrain's real path: compose -> validate -> build -> fit, with a tracker as the clock."""
    from csetrain.loop import fit
    from csetrain.runtime import seed_everything

    try:
        from csetrain.app.compose import compose
        from csetrain.app.settings import validate_settings
        from csetrain.app.store.tracker import NullTracker
        from csetrain.app.train import build
    except ImportError:  # a `--tree` checkout from before the csetrain/app/ package
        from csetrain.cli import compose
        from csetrain.tracking import NullTracker
        from csetrain.train import build

        from csetrain.config import validate_settings

    class StepClock(NullTracker):
        """fit() logs after every step with trainer.log_every=1: stamp each step's end."""

        def __init__(self) -> None:
            self.stamps: list[tuple[float, float]] = []
            self.losses: list[float] = []

        def log_metrics(self, metrics, step):
            if "train/loss" in metrics:
                self.stamps.append(now())
                self.losses.append(metrics["train/loss"])

    model = ["model=minilm-l6", f"model.pooler={args.pooler}"]
    if args.model == "tiny-decoder":
        model = ["model=tiny_decoder", "model.pooler=last_token"]
    overrides = [
        *model,
        "data=wiki",
        f"data.files=[{CORPUS}]",
        f"data.max_sentences={args.batch_size * total_steps(args)}",
        f"data.max_length={args.max_length}",
        "objective=simcse_unsup",
        f"objective.temperature={TEMPERATURE}",
        f"trainer.max_steps={total_steps(args)}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.lr={LR}",
        f"trainer.max_grad_norm={MAX_GRAD_NORM}",
        f"trainer.seed={SEED}",
        f"trainer.num_threads={args.threads}",
        "trainer.eval_every=0",
        "trainer.log_every=1",
        "trainer.device=cpu",
        "trainer.progress=false",
        "tracking=none",
        f"paths.data_dir={args.data_dir}",
        f"paths.output_dir={workdir}",
    ]
    cfg = compose("train", overrides)
    settings = validate_settings(cfg)
    seed_everything(SEED)
    clock = StepClock()
    components, _ = build(cfg, settings, workdir / "run", clock)
    start = now()
    fit(components, settings.trainer if hasattr(settings, "trainer") else settings["trainer"])
    return [start, *clock.stamps], statistics.mean(clock.losses)


def run_sentence_transformers(args: argparse.Namespace, workdir: Path) -> tuple[list, float]:
    """SentenceTransformerTrainer + MNRL; a callback stamps each step's end."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import TrainerCallback

    from csetrain.modeling.backbones import minilm_dir

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[tuple[float, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.stamps.append(now())

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(now())

    if args.model == "tiny-decoder":
        model = tiny_decoder_st(workdir)
    else:
        model = SentenceTransformer(str(minilm_dir()), device="cpu")
    model.max_seq_length = args.max_length
    if args.model == "minilm" and args.pooler != "mean":  # the packaged model pools by mean
        model[1] = Pooling(model.get_embedding_dimension(), pooling_mode=args.pooler)
    sentences = read_sentences(args)
    dataset = Dataset.from_dict({"anchor": sentences, "positive": sentences})
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(workdir),
        max_steps=total_steps(args),
        per_device_train_batch_size=args.batch_size,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM,
        optim="adamw_torch",
        seed=SEED,
        use_cpu=True,
        report_to="none",
        logging_strategy="no",
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
    )
    clock = StepClock()
    loss = MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE)
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=dataset, loss=loss, callbacks=[clock]
    )
    output = trainer.train()
    return clock.stamps, float(output.training_loss)  # the mean over all steps


def tiny_decoder_st(workdir: Path):
    """model=tiny_decoder's weights and tokenizer, saved and loaded by sentence-transformers
    with last-token pooling (the same random init: init_seed 0, attention dropout 0.1)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    from csetrain.modeling.decoders import tiny_decoder

    backbone = tiny_decoder(dropout=0.1, init_seed=0)
    folder = workdir / "tiny-decoder"
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    transformer = Transformer(str(folder))
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling], device="cpu")


def run_plain(args: argparse.Namespace, workdir: Path) -> tuple[list, float]:
    """The textbook loop: tokenize per batch, two forward passes, InfoNCE, AdamW."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from csetrain.modeling.backbones import minilm_dir

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = AutoModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(total_steps(args)))
    sentences = read_sentences(args)
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(SEED))

    def embed(inputs: dict) -> torch.Tensor:
        states = model(**inputs).last_hidden_state  # (B, L, D)
        if args.pooler == "cls":
            return states[:, 0]
        mask = inputs["attention_mask"].unsqueeze(-1).float()  # (B, L, 1)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    stamps, losses = [now()], []
    for step in range(total_steps(args)):
        batch = [sentences[i] for i in order[step * args.batch_size : (step + 1) * args.batch_size]]
        inputs = tokenizer(
            batch, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt"
        )
        anchors, positives = embed(inputs), embed(inputs)  # two dropout masks
        logits = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T / TEMPERATURE
        loss = F.cross_entropy(logits, torch.arange(len(batch)))  # (B, B), diagonal = positives
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(now())
    return stamps, statistics.mean(losses)


RUNNERS = {
    "csetrain": run_csetrain,
    "sentence-transformers": run_sentence_transformers,
    "plain": run_plain,
}


# --- parent and child processes ---------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Run one variant once and print its raw measurements as the last line of stdout."""
    born = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        stamps, loss = RUNNERS[args.variant.split("@")[0]](args, Path(tmp))
    if len(stamps) != total_steps(args) + 1:
        raise SystemExit(f"{args.variant}: timed {len(stamps) - 1} steps, not {total_steps(args)}")
    result = {
        "variant": args.variant,
        "step_seconds": [b[0] - a[0] for a, b in zip(stamps, stamps[1:])],
        "step_cpu_seconds": [b[1] - a[1] for a, b in zip(stamps, stamps[1:])],
        "peak_rss_mib": peak_rss_mib(),
        "setup_s": stamps[0][0] - born,
        "mean_loss": loss,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
    }
    print(json.dumps(result))


def summarize(runs: list[dict], args: argparse.Namespace) -> dict:
    """One variant: the round with the lowest median step time (others only lost CPU to other
    processes), its warmup steps dropped; peak RSS is the maximum over rounds."""

    def timed(run: dict, key: str = "step_seconds") -> list[float]:
        return run[key][args.warmup :]

    best = min(runs, key=lambda r: statistics.median(timed(r)))
    return {
        "variant": best["variant"],
        "s_per_step": statistics.median(timed(best)),
        "s_per_step_min": min(timed(best)),
        "s_per_step_max": max(timed(best)),
        "cpu_s_per_step": statistics.median(timed(best, "step_cpu_seconds")),
        "sentences_per_s": args.batch_size / statistics.median(timed(best)),
        "round_medians": [statistics.median(timed(r)) for r in runs],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "setup_s": best["setup_s"],
        "wall_s": sum(r["wall_s"] for r in runs),
        "mean_loss": best["mean_loss"],
        "load_avg_1min": best["load_avg_1min"],
        "runs": runs,
    }


def model_label(args: argparse.Namespace) -> str:
    if args.model == "tiny-decoder":
        return "tiny_decoder (2-layer Llama shape, last-token pooling, causal)"
    return f"all-MiniLM-L6-v2 ({args.pooler} pooling)"


def report(results: list[dict], args: argparse.Namespace) -> None:
    base = next(r for r in results if r["variant"] == BASELINE)
    print(
        f"unsup SimCSE, {model_label(args)}, batch {args.batch_size}, "
        f"max length {args.max_length}, {args.threads} threads, "
        f"{args.steps} timed steps after {args.warmup} warmup, {args.rounds} round(s)"
    )
    columns = ("s/step", "min-max", "CPU s/step", "sent/s", "peak RSS MiB")
    columns += ("time/ST", "CPU/ST", "RSS/ST", "setup s", "wall s", "loss", "load")
    rows = {}
    for r in results:
        rows[r["variant"]] = (
            f"{r['s_per_step']:.3f}",
            f"{r['s_per_step_min']:.2f}-{r['s_per_step_max']:.2f}",
            f"{r['cpu_s_per_step']:.3f}",
            f"{r['sentences_per_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['s_per_step'] / base['s_per_step']:.2f}",
            f"{r['cpu_s_per_step'] / base['cpu_s_per_step']:.2f}",
            f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}",
            f"{r['setup_s']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{r['mean_loss']:.4f}",
            f"{r['load_avg_1min']:.1f}",
        )
    print_table(columns, rows)
    print(
        "s/step: median wall seconds per timed step, min-max: its range (fastest round); "
        "CPU s/step: median process CPU seconds, all threads; sent/s = batch / s/step; "
        "peak RSS: ru_maxrss of each variant's own subprocess (max over rounds); "
        "time/ST, CPU/ST, RSS/ST: ratio to sentence-transformers (< 1 = faster/smaller); "
        "setup s: interpreter start to first step; wall s: all of its subprocesses; "
        "loss: mean training loss over all steps; load: 1-min load average when it finished "
        "(above the core count: other processes competed for the CPUs)"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if child_ran(args, child, "accelerate", "bench_train.py"):
        return
    trees = dict(t.split("=", 1) for t in args.tree)  # label -> checkout whose csetrain is timed
    skip = [*args.skip, *(["plain"] if args.model == "tiny-decoder" else [])]
    variants = [v for v in VARIANTS if v == BASELINE or v not in skip]
    variants += [f"csetrain@{label}" for label in trees]
    runs = {v: [] for v in variants}
    for _ in range(args.rounds):  # round-robin, so load changes on a shared machine hit all
        for variant in variants:
            tree = trees.get(variant.partition("@")[2])
            env = {"PYTHONPATH": str(Path(tree).resolve())} if tree else {}
            runs[variant].append(spawn(__file__, variant, argv, args.threads, env))
    results = [summarize(runs[v], args) for v in variants]
    report(results, args)
    if args.json:
        print(json.dumps({"settings": vars(args), "results": results}))


if __name__ == "__main__":
    main()
