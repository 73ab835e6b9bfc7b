"""STS-B dev Spearman of one model over a (layer x dim) grid: how a 2DMSE model degrades when
served shallower and smaller (REFERENCE.md §5.6: a single full-model number hides that).

Each cell is the model as inference would serve it -- the first `layer` transformer layers, the
first `dim` coordinates of the pooled vector -- built with `load_sentence_encoder(path,
layer=l, dim=d)` for a saved folder (e.g. a run's `checkpoints/best/`), or with the Hydra model
option and `model.layer=l model.dim=d` for a model option. Scores are cosine Spearman x100 on
STS-B dev in SentEval's protocol (`STSEvaluator(['stsb'], 'dev', 'senteval', data_dir)`), the
same number csetrain selects checkpoints on. `dim` values above the hidden size are skipped.

    python scripts/grid_2dmse.py outputs/runs/<date>/<time>/checkpoints/best \
        [--layers 2 4 6] [--dims 64 128 384] [--data-dir DIR] [--json]
    python scripts/grid_2dmse.py --model minilm-l6 [--override model.pooler=cls ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", help="a saved model folder (checkpoints/best)")
    parser.add_argument("--model", help="a model option (conf/model/*.yaml) instead of a folder")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128, 384])
    parser.add_argument("--data-dir", default=os.environ.get("CSETRAIN_DATA_DIR", ""))
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    if bool(args.path) == bool(args.model):
        parser.error("give exactly one of PATH or --model")
    if not args.data_dir:
        parser.error("set --data-dir or $CSETRAIN_DATA_DIR (the STS-B dev files live there)")
    return args


def encoder_factory(args: argparse.Namespace):
    """(layer, dim) -> SentenceEncoder serving that cell."""
    if args.path:
        from csetrain.modeling.export import load_sentence_encoder

        return lambda layer, dim: load_sentence_encoder(args.path, layer=layer, dim=dim)
    from hydra import compose, initialize_config_dir

    from csetrain.config import config_dir, instantiate, register_resolvers

    def build(layer: int, dim: int):
        register_resolvers()
        overrides = [
            f"model={args.model}",
            *args.override,
            f"model.layer={layer}",
            f"model.dim={dim or 'null'}",
        ]
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return instantiate(compose("train", overrides=overrides).model)

    return build


def score_grid(args: argparse.Namespace) -> dict[int, dict[int, float]]:
    from csetrain.eval.sts import STSEvaluator

    evaluator = STSEvaluator(["stsb"], "dev", "senteval", args.data_dir)
    build = encoder_factory(args)
    hidden = build(args.layers[0], None).hidden_size
    grid: dict[int, dict[int, float]] = {}
    for layer in args.layers:
        grid[layer] = {}
        for dim in [d for d in args.dims if d <= hidden]:
            started = time.perf_counter()
            grid[layer][dim] = evaluator(build(layer, dim)).primary
            seconds = time.perf_counter() - started
            print(
                f"  layer {layer} dim {dim}: {grid[layer][dim]:.2f} ({seconds:.0f} s)",
                file=sys.stderr,
            )
    return grid


def table(grid: dict[int, dict[int, float]], dims: list[int]) -> str:
    lines = ["| layer \\ dim | " + " | ".join(str(d) for d in dims) + " |"]
    lines.append("|---" * (len(dims) + 1) + "|")
    for layer, row in grid.items():
        cells = [f"{row[d]:.2f}" if d in row else "-" for d in dims]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from csetrain.config import CsetrainError

    try:
        grid = score_grid(args)
    except CsetrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("STS-B dev Spearman x100 (SentEval protocol), " + (args.path or f"model={args.model}"))
    print(table(grid, args.dims))
    if args.json:
        print(
            json.dumps(
                {str(layer): {str(d): v for d, v in row.items()} for layer, row in grid.items()}
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
