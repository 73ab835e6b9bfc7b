"""Fault drill for exact resume: kill -9 a CPU training run at random steps, resume it with
trainer.resume=auto, and compare the final weights and test metrics with an uninterrupted run.

    python scripts/fault_resume.py --trials 10 --steps 20

Prints one line per trial and a summary "identical in N/N".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

ARGS = [
    "experiment=demo",
    "model=tiny",
    "trainer.batch_size=8",
    "trainer.save_every=1",
    "trainer.eval_every=5",
    "trainer.progress=false",
    "tracking=none",
]


def train(out: Path, steps: int, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "csetrain",
        "train",
        *ARGS,
        f"trainer.max_steps={steps}",
        f"paths.output_dir={out}",
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def result(out: Path) -> tuple[dict, dict]:
    (run,) = [p.parent for p in out.glob("runs/*/*/eval_results.json")]
    return load_file(str(run / "checkpoints/best/model.safetensors")), json.loads(
        (run / "eval_results.json").read_text()
    )


def saved_step(out: Path) -> int:
    metas = list(out.glob("runs/*/*/checkpoints/last/meta.json"))
    try:
        return json.loads(metas[0].read_text())["step"] if metas else 0
    except (OSError, json.JSONDecodeError):
        return 0


def trial(root: Path, steps: int, kill_at: int) -> tuple[int, dict, dict]:
    proc = train(root, steps)
    while proc.poll() is None and saved_step(root) < kill_at:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = saved_step(root)
    train(root, steps, "trainer.resume=auto").wait()
    return (killed_after, *result(root))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        train(Path(tmp) / "reference", args.steps).wait()
        ref_weights, ref_report = result(Path(tmp) / "reference")
        identical = 0
        for i in range(args.trials):
            kill_at = rng.randrange(1, args.steps)
            killed_after, weights, report = trial(Path(tmp) / f"trial{i}", args.steps, kill_at)
            ok = (
                same(weights, ref_weights)
                and report["test"]["metrics"] == ref_report["test"]["metrics"]
            )
            identical += ok
            print(
                f"trial {i}: kill -9 after saved step {killed_after} (target {kill_at}) -> "
                f"{'identical' if ok else 'DIFFERENT'} weights and test metrics",
                flush=True,
            )
        print(f"identical in {identical}/{args.trials}")


if __name__ == "__main__":
    main()
