"""`eval=grid`: one STS task scored at every (layer, prefix size) of an encoder.

A 2D Matryoshka model (2DMSE, Li et al., arXiv 2402.14776) is meant to be served shallower and
smaller; a single full-model number hides whether that works, so the paper reports layer x
dimension grids. Each cell is the embedding inference would serve with
`model.layer=l model.dim=d` (pool hidden layer l, the head if `mlp_head=always`, keep the first d
coordinates), scored exactly as the native STS evaluator scores it (cosine Spearman x100; the cell
(l, d) equals `STSEvaluator` on the encoder built with that layer and dim).

Cost: every layer comes out of one forward pass (`output_hidden_states`), and every prefix size
is a slice of the same vectors, so a grid costs about one evaluation, not one per cell.
Training runs it on the selected checkpoint when the config lists it in `after_training`
(2DMSE's objective option does) and logs the files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from csetrain.config import ConfigError
from csetrain.eval.sts import YEARS, EvalResult, STSEvaluator

Grid = dict[int, dict[int, float]]  # layer -> prefix size -> Spearman x100


def default_dims(hidden_size: int) -> list[int]:
    """8, 16, 32, ... below the hidden size, then the hidden size (2DMSE's size list + full)."""
    dims, d = [], 8
    while d < hidden_size:
        dims.append(d)
        d *= 2
    return [*dims, hidden_size]


class GridEvaluator:
    """Scores `task` (one STS task, `split`, `protocol`) for every `layers` x `dims` cell.

    `layers`: 1..L (null: all); `dims`: prefix sizes (null: 8, 16, ... and the full size).
    Each call writes `grid.png` (heatmap), `grid.md` and `grid.json` into `output_dir` (null:
    no files; `csetrain eval` sets its run dir).
    Metrics: `<protocol>/<task label>/spearman_l<layer>_d<dim>`; the primary number is the
    largest cell (the full model when the grid includes it).
    """

    def __init__(
        self,
        task: str = "stsb",
        split: str = "dev",
        protocol: str = "senteval",
        layers: list[int] | None = None,
        dims: list[int] | None = None,
        data_dir: str | None = None,
        batch_size: int = 128,
        progress: bool = False,
        output_dir: str | None = None,
        prompt_name: str | None = None,
    ) -> None:
        if task in YEARS and split != "test":
            raise ConfigError(f"eval.task={task} has only a test split: set eval.split=test")
        sts = STSEvaluator(
            [task], split, protocol, data_dir, batch_size, progress, prompt_name=prompt_name
        )
        self._setup(sts, layers, dims, output_dir)

    @classmethod
    def from_evaluator(
        cls,
        sts: STSEvaluator,
        layers: list[int] | None = None,
        dims: list[int] | None = None,
        output_dir: str | Path | None = None,
    ) -> GridEvaluator:
        """A grid over the first task of an STS evaluator whose data is already loaded."""
        grid = cls.__new__(cls)
        grid._setup(sts, layers, dims, output_dir)
        return grid

    def _setup(self, sts: STSEvaluator, layers, dims, output_dir) -> None:
        self.sts, self.task, self.tasks = sts, sts.tasks[0], sts.tasks[:1]
        self.protocol, self.split = sts.protocol, sts.split
        self.layers = sorted(set(layers)) if layers else None
        self.dims = sorted(set(dims)) if dims else None
        self.output_dir = Path(output_dir) if output_dir else None

    def cells(self, encoder) -> tuple[list[int], list[int]]:
        """(layers, dims) for this encoder, checked against its depth and width."""
        depth, width = encoder.num_layers, encoder.hidden_size
        layers = self.layers or list(range(1, depth + 1))
        dims = self.dims or default_dims(width)
        if not 1 <= layers[0] <= layers[-1] <= depth:
            raise ConfigError(f"eval.layers={layers}: choose layers in 1..{depth} or null (all)")
        if not 1 <= dims[0] <= dims[-1] <= width:
            raise ConfigError(f"eval.dims={dims}: choose sizes in 1..{width} or null (8, 16, ...)")
        return layers, dims

    def scores(self, encoder) -> Grid:
        """Spearman x100 of every cell: one encoding pass, then slices of the same vectors."""
        layers, dims = self.cells(encoder)
        unique = self.sts.sentences()
        vectors = self.sts.encode(encoder, unique, embed=encoder.inference_layers)
        return {
            layer: {d: self.sts.score(unique, vectors[:, layer - 1, :d]).primary for d in dims}
            for layer in layers
        }

    def key(self, layer: int, dim: int) -> str:
        return f"{self.protocol}/{self.sts.label(self.task)}/spearman_l{layer}_d{dim}"

    def __call__(self, encoder) -> EvalResult:
        grid = self.scores(encoder)
        metrics = {self.key(layer, d): v for layer, row in grid.items() for d, v in row.items()}
        top = max(grid)
        primary_key = self.key(top, max(grid[top]))
        label = self.sts.label(self.task)
        details = {
            "protocol": self.protocol,
            "split": self.split,
            "pairs": {label: sum(len(p.gold) for p in self.sts.data[self.task])},
            "grid": {
                str(layer): {str(d): v for d, v in row.items()} for layer, row in grid.items()
            },
            "model": str(getattr(encoder, "source", "")),
        }
        if self.output_dir is not None:
            details["files"] = [str(p) for p in self.write(grid, self.output_dir, details)]
        return EvalResult(metrics, metrics[primary_key], primary_key, details)

    def title(self, model: str) -> str:
        return (
            f"{self.sts.label(self.task)} Spearman x100 ({self.protocol} protocol), {model}"
        ).strip(", ")

    def write(self, grid: Grid, folder: Path, details: dict) -> list[Path]:
        """grid.json (everything), grid.md (the table) and grid.png (the heatmap) in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        title = self.title(details["model"])
        table = folder / "grid.md"
        table.write_text(f"{title}\n\n{markdown_table(grid)}\n")
        data = folder / "grid.json"
        data.write_text(json.dumps({"title": title, "task": self.task, **details}, indent=2))
        png = folder / "grid.png"
        grid_heatmap(grid, title).savefig(png, format="png", dpi=110)
        return [png, table, data]


def markdown_table(grid: Grid) -> str:
    """Rows: layers; columns: prefix sizes; cells: Spearman x100 to two decimals."""
    dims = sorted({d for row in grid.values() for d in row})
    lines = ["| layer \\ dim | " + " | ".join(str(d) for d in dims) + " |"]
    lines.append("|---" * (len(dims) + 1) + "|")
    for layer, row in sorted(grid.items()):
        cells = [f"{row[d]:.2f}" if d in row else "-" for d in dims]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_heatmap(grid: Grid, title: str):
    """Layers (rows) x prefix sizes (columns), each cell annotated with its score; a matplotlib
    Figure from the object API (no pyplot state, no display)."""
    from matplotlib.figure import Figure

    layers = sorted(grid)
    dims = sorted({d for row in grid.values() for d in row})
    values = [[grid[layer].get(d, math.nan) for d in dims] for layer in layers]
    fig = Figure(figsize=(1.1 * len(dims) + 2.5, 0.6 * len(layers) + 2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            light = image.norm(v) > 0.6  # viridis turns yellow: dark text there
            color = "black" if light else "white"
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(dims)), [str(d) for d in dims])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set(xlabel="embedding size (first d dims)", ylabel="layer", title=title)
    fig.colorbar(image, ax=ax, label="Spearman x100")
    return fig


def grid_after_training(objective, dev_evaluator, encoder, run_dir: Path, tracker, step: int):
    """The selected checkpoint's grid: every layer x the prefix sizes the objective trained (its
    `sizes`, as 2DMSE's; else 8, 16, ...) and the full size, on the dev evaluator's task; files
    under `run_dir/grid/`, logged as artifacts `grid/` and metrics
    `grid/<protocol>/<task>/spearman_l<l>_d<d>`."""
    sizes = getattr(objective, "sizes", None)
    dims = [*sizes(encoder.hidden_size), encoder.hidden_size] if sizes else None
    folder = Path(run_dir) / "grid"
    result = GridEvaluator.from_evaluator(dev_evaluator, dims=dims, output_dir=folder)(encoder)
    tracker.log_metrics(result.prefixed("grid"), step)
    tracker.log_artifacts(folder, "grid")
    return result
