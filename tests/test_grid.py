"""Layer x dim grid: each cell equals the native evaluator on the encoder built with that
`layer`/`dim`; one encoding pass for the whole grid; files and the `csetrain eval` command."""

import json

import pytest
import torch

from csetrain.config import ConfigError
from csetrain.eval.grid import GridEvaluator, default_dims, markdown_table
from csetrain.eval.sts import PairSet, STSEvaluator
from csetrain.modeling.encoder import SentenceEncoder

from .helpers import csetrain_in_process, small_sts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_default_dims_are_powers_of_two_then_full():
    assert default_dims(32) == [8, 16, 32]
    assert default_dims(384) == [8, 16, 32, 64, 128, 256, 384]
    assert default_dims(8) == [8]


@pytest.fixture(scope="module")
def stsb_dev(data_dir):
    """STS-B dev cut to its first 300 pairs: the same code paths, a fifth of the encoding."""
    evaluator = STSEvaluator(["stsb"], "dev", data_dir=str(data_dir))
    (dev,) = evaluator.data["stsb"]
    evaluator.data["stsb"] = [PairSet(dev.name, dev.first[:300], dev.second[:300], dev.gold[:300])]
    return evaluator


@pytest.mark.parametrize("mlp_head", ["none", "always"])
def test_cells_equal_the_native_evaluator_with_layer_and_dim(stsb_dev, tiny_backbone, mlp_head):
    torch.manual_seed(0)  # the head's init
    full = SentenceEncoder(tiny_backbone, pooler="mean", mlp_head=mlp_head)
    result = GridEvaluator.from_evaluator(stsb_dev, dims=[8, 20, 32])(full)
    assert len(result.metrics) == 2 * 3
    for layer, dim in ((1, 20), (2, 8)):
        served = SentenceEncoder(tiny_backbone, "mean", mlp_head, layer=layer, dim=dim)
        served.head = full.head  # the same weights, served at (layer, dim)
        got = result.metrics[f"senteval/stsb_dev/spearman_l{layer}_d{dim}"]
        assert got == pytest.approx(stsb_dev(served).primary, abs=1e-9)
    assert result.primary_key == "senteval/stsb_dev/spearman_l2_d32"
    assert result.primary == pytest.approx(stsb_dev(full).primary, abs=1e-9)  # the full model


def test_one_forward_pass_per_batch_for_the_whole_grid(stsb_dev, tiny_encoder):
    calls = []
    hook = tiny_encoder.transformer.register_forward_hook(lambda *_: calls.append(1))
    stsb_dev(tiny_encoder)
    one_evaluation = len(calls)
    calls.clear()
    GridEvaluator.from_evaluator(stsb_dev)(tiny_encoder)  # 2 layers x 3 sizes
    hook.remove()
    assert len(calls) == one_evaluation


def test_cells_are_checked_against_the_encoder(data_dir, stsb_dev, tiny_encoder):
    with pytest.raises(ConfigError, match="eval.layers"):
        GridEvaluator.from_evaluator(stsb_dev, layers=[3])(tiny_encoder)
    with pytest.raises(ConfigError, match="eval.dims"):
        GridEvaluator.from_evaluator(stsb_dev, dims=[8, 64])(tiny_encoder)
    with pytest.raises(ConfigError, match="eval.split=test"):
        GridEvaluator(task="sts12", data_dir=str(data_dir))


def test_markdown_table_by_hand():
    table = markdown_table({1: {8: 10.0, 16: 20.125}, 2: {8: 30.0}})
    assert table.splitlines() == [
        "| layer \\ dim | 8 | 16 |",
        "|---|---|---|",
        "| 1 | 10.00 | 20.12 |",
        "| 2 | 30.00 | - |",
    ]


def test_written_files_hold_the_scores(stsb_dev, tiny_encoder, tmp_path):
    grid = GridEvaluator.from_evaluator(stsb_dev, dims=[8, 32], output_dir=tmp_path)
    result = grid(tiny_encoder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json", "grid.md", "grid.png"]
    assert (tmp_path / "grid.png").read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((tmp_path / "grid.json").read_text())
    assert saved["grid"]["2"]["32"] == pytest.approx(result.primary)
    assert saved["grid"]["1"]["8"] == result.metrics["senteval/stsb_dev/spearman_l1_d8"]
    assert (
        f"| 1 | {result.metrics['senteval/stsb_dev/spearman_l1_d8']:.2f} |"
        in (tmp_path / "grid.md").read_text()
    )


def test_cli_eval_grid_writes_into_its_run_dir(tmp_path):
    proc = csetrain_in_process(
        "eval",
        "model=tiny",
        "eval=grid",
        "eval.dims=[8,32]",
        f"paths.data_dir={small_sts()}",  # STS-B dev cut to 200 pairs: the files, not the scores
        f"paths.output_dir={tmp_path}",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(metrics) == {
        f"test/senteval/stsb_dev/spearman_l{layer}_d{dim}" for layer in (1, 2) for dim in (8, 32)
    }
    (run_dir,) = (p.parent for p in tmp_path.glob("evals/*/*/eval_results.json"))
    saved = json.loads((run_dir / "grid.json").read_text())
    assert saved["grid"]["1"]["8"] == pytest.approx(
        metrics["test/senteval/stsb_dev/spearman_l1_d8"]
    )
    assert (run_dir / "grid.png").read_bytes()[:8] == PNG_MAGIC
