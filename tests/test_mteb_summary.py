"""The leaderboard view of an eval=mteb run: task main scores, unweighted type means and the
mean over tasks, a re-scoring (SummEval v2) reported but not averaged; the table of `runs
compare` and the bar plot read those metrics and the protocol tags."""

from types import SimpleNamespace

import pytest

from csetrain.app.reports.leaderboard import (
    leaderboard_table,
    summary_bars,
    summary_keys,
    summary_tags,
)
from csetrain.eval.mteb_summary import summary, task_metrics


def _task(name, kind, main="accuracy", subsets=("default",)):
    meta = SimpleNamespace(name=name, type=kind, main_score=main, is_multilingual=len(subsets) > 1)
    return SimpleNamespace(metadata=meta, eval_splits=["test"], hf_subsets=list(subsets))


def test_task_metrics_label_subsets_and_average_the_main_score():
    entry = {
        "main_score": 0.8,
        "cosine_spearman": 0.8,
        "ap": float("nan"),
        "languages": ["eng-Latn"],
    }
    result = SimpleNamespace(
        task_name="STS17",
        scores={
            "test": [
                {**entry, "hf_subset": "en-en"},
                {**entry, "hf_subset": "en-de", "main_score": 0.5, "cosine_spearman": 0.5},
            ]
        },
    )
    assert task_metrics(result, "cosine_spearman") == pytest.approx(
        {
            "mteb/STS17.en-en/cosine_spearman": 80.0,
            "mteb/STS17.en-de/cosine_spearman": 50.0,
            "mteb/STS17/cosine_spearman": 65.0,
            "mteb/STS17/main_score": 65.0,
        }
    )  # NaN (mteb's `ap` of a multi-class task) is left out


def test_type_means_and_overall_mean_by_hand():
    tasks = [
        _task("A", "Classification"),
        _task("B", "Classification"),
        _task("S", "STS", "cosine_spearman"),
        _task("SummEval", "Summarization", "cosine_spearman"),
        _task("SummEvalSummarization.v2", "Summarization", "cosine_spearman"),
    ]
    scores = {"A": 80.0, "B": 60.0, "S": 75.0, "SummEval": 30.0, "SummEvalSummarization.v2": 26.0}
    metrics = {f"mteb/{k}/main_score": v for k, v in scores.items()}
    means, rows = summary(tasks, metrics, "2.x", {"A", "SummEval"})
    assert means == pytest.approx(
        {
            "mteb/type/Classification": 70.0,
            "mteb/type/STS": 75.0,
            "mteb/type/Summarization": 30.0,  # v1 only: v2 re-scores the same dataset
            "mteb/avg/main_score": (80 + 60 + 75 + 30) / 4,
        }
    )
    by_task = {r["task"]: r for r in rows}
    assert not by_task["SummEvalSummarization.v2"]["in_means"]
    assert "MTEB(eng, v1) task definition" in by_task["A"]["protocol"]
    assert "mteb default task definition" in by_task["B"]["protocol"]
    assert "v1 semantics" in by_task["SummEval"]["protocol"]


def _run(metrics, summary_rows):
    return {
        "metrics": {f"test/{k}": v for k, v in metrics.items()},
        "tags": summary_tags(summary_rows),
    }


def test_compare_table_and_bars_read_the_summary():
    tasks = [_task("A", "Classification"), _task("R", "Retrieval", "ndcg_at_10")]
    runs = []
    for a, r in ((80.0, 60.0), (82.0, 59.0)):
        metrics = {"mteb/A/main_score": a, "mteb/R/main_score": r}
        means, rows = summary(tasks, metrics, "2.x", set())
        runs.append(_run({**metrics, **means}, rows))
    assert [label for _, label in summary_keys(runs)] == [
        "A",
        "Classification (mean)",
        "R",
        "Retrieval (mean)",
        "mean over tasks",
    ]
    text = leaderboard_table(*runs)
    line = next(row for row in text.splitlines() if row.startswith("mean over tasks"))
    assert line.split()[3:6] == ["70.00", "70.50", "0.50"]
    assert "ndcg_at_10 x100, split test" in text
    fig = summary_bars(runs[0])
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == pytest.approx([80.0, 80.0, 60.0, 60.0, 70.0])
