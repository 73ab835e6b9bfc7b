"""Several dev evaluators as one selection metric (csetrain/eval/combined.py, eval@dev_eval=dev_mix):
the weighted mean of their primaries selects, each member is logged, and a member that scores a
test split makes the whole selection refused."""

import gzip
import json
from pathlib import Path

import pytest

from csetrain.app.components import dev_evaluator
from csetrain.app.train import train
from csetrain.config import ConfigError
from csetrain.eval.combined import CombinedEvaluator
from csetrain.eval.sts import EvalResult

from .helpers import shared_cache, small_sts
from .test_config import _compose


class Fixed:
    """An evaluator with a given primary (the members' own scoring is tested in their files)."""

    def __init__(self, name, primary, split="dev"):
        self.name, self.value, self.split, self.protocol = name, primary, split, "senteval"

    def __call__(self, encoder):
        key = f"senteval/{self.name}/score"
        return EvalResult({key: self.value}, self.value, key, {"pairs": {self.name: 1}})


def test_selection_is_the_normalized_weighted_mean_and_every_member_is_kept():
    combined = CombinedEvaluator({"a": Fixed("a", 80.0), "b": Fixed("b", 40.0)}, {"a": 3, "b": 1})
    result = combined(None)
    assert result.primary == pytest.approx(0.75 * 80 + 0.25 * 40, rel=1e-15)
    assert result.metrics == {
        "senteval/a/score": 80.0,
        "senteval/b/score": 40.0,
        "combined/weighted_mean": result.primary,
    }
    assert CombinedEvaluator({"a": Fixed("a", 80.0), "b": Fixed("b", 40.0)})(None).primary == 60.0
    assert CombinedEvaluator({"a": Fixed("a", 1.0), "t": Fixed("t", 1.0, "test")}).split == "test"
    with pytest.raises(ConfigError, match=r"eval.weights.c: not in eval.evaluators"):
        CombinedEvaluator({"a": Fixed("a", 1.0)}, {"c": 1.0})
    with pytest.raises(ConfigError, match="weights must be >= 0 with a positive sum"):
        CombinedEvaluator({"a": Fixed("a", 1.0)}, {"a": 0.0})


@pytest.mark.parametrize(
    "overrides",
    [
        ["eval@dev_eval=retrieval_test"],
        [
            "eval@dev_eval=dev_mix",
            "dev_eval.evaluators.retrieval_dev.split=test",
            "dev_eval.evaluators.retrieval_dev.dev_from=null",
        ],
    ],
)
def test_selecting_on_a_test_split_is_refused(data_dir, overrides):
    cfg = _compose([*overrides, f"paths.data_dir={data_dir}"])
    with pytest.raises(ConfigError, match="dev_eval scores a test split"):
        dev_evaluator(cfg)


@pytest.fixture
def small_beir(data_dir, tmp_path):
    """60 SciFact train claims with their cited abstracts and 100 more documents."""
    source = data_dir / "mteb" / "SciFact"
    lines = (source / "qrels" / "train.tsv").read_text().splitlines()
    queries = [json.loads(q) for q in (source / "queries_train.jsonl").read_text().splitlines()][
        :60
    ]
    keep = {q["_id"] for q in queries}
    qrels = [line for line in lines[1:] if line.split("\t")[0] in keep]
    cited = {line.split("\t")[1] for line in qrels}
    with gzip.open(source / "corpus.jsonl.gz", "rt") as f:
        docs = [d for i, d in enumerate(f) if i < 100 or json.loads(d)["_id"] in cited]
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "qrels" / "train.tsv").write_text("\n".join([lines[0], *qrels]) + "\n")
    (folder / "queries_train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "corpus.jsonl").write_text("".join(docs))
    return folder


@pytest.mark.slow  # ~2 min on 2 loaded cores: a real run with two dev evaluators
def test_training_on_beir_pairs_selects_on_the_weighted_dev_mean(tmp_path, small_beir):
    retrieval = "dev_eval.evaluators.retrieval_dev"
    cfg = _compose(
        [
            "model=tiny",
            "data=scifact_train",
            f"data.folder={small_beir}",
            "data.holdout_size=10",
            "data.max_length=64",
            "objective=simcse_sup",
            "eval@dev_eval=dev_mix",
            f"{retrieval}.folder={small_beir}",
            f"{retrieval}.holdout_size=10",
            "dev_eval.weights.stsb_dev=0.25",
            "dev_eval.weights.retrieval_dev=0.75",
            "eval=stsb_test",
            "trainer.max_steps=4",
            "trainer.eval_every=2",
            "trainer.batch_size=8",
            "trainer.progress=false",
            "tracking=none",
            f"paths.output_dir={tmp_path}/out",
            f"paths.data_dir={small_sts()}",
            f"paths.cache_dir={shared_cache()}",
        ]
    )
    summary = train(cfg)
    report = json.loads((Path(summary.run_dir) / "eval_results.json").read_text())
    history = report["selection"]["history"]
    assert [h["step"] for h in history] == [0, 2, 4]
    for h in history:
        both = 0.25 * h["senteval/stsb_dev/spearman"] + 0.75 * h["mteb/scifact_dev/ndcg_at_10"]
        assert h["primary"] == pytest.approx(both, rel=1e-12) == h["dev_mix/weighted_mean"]
    assert report["selection"]["best"] == max(h["primary"] for h in history)
