"""The model card renderer (records -> README.md): front matter the hub parses, each test score
labelled with its protocol and shown beside the start checkpoint's, seeds and prompts."""

from csetrain.modeling.model_card import (
    CardRecord,
    DataFile,
    TaskScore,
    protocol_of,
    read_front_matter,
    render_card,
)


def _record(**changes) -> CardRecord:
    base = dict(
        run_id="0123456789abcdef",
        run_name="csetrain-simcse_unsup-01234567",
        run_label="experiment=demo",
        base_model="bert-base-uncased",
        base_revision="86b5e0934494bd15c9632b12f734a8a67f723594",
        objective="simcse_unsup",
        objective_class="csetrain.objectives.simcse_unsup.SimCSEUnsup",
        paper="arXiv:2104.08821",
        changed={"trainer.lr": ("1e-05", "3e-05")},
        data_name="wiki",
        data_rows=22600,
        data_files=[DataFile("wiki/wiki1m_head.txt", "abcdef0123456789", "CC BY-SA")],
        selection_metric="eval/senteval/stsb_dev/spearman",
        selection_step=250,
        selection_value=81.234,
        tests=[
            TaskScore("test/senteval/sts12/spearman", 68.4, 30.9),
            TaskScore("test/mteb/SummEval/cosine_spearman", 30.1),
            TaskScore("test/mteb/SummEvalSummarization.v2/cosine_spearman", 29.9),
        ],
        csetrain_version="0.1.0",
        git_sha="da45d00",
    )
    return CardRecord(**{**base, **changes})


def test_front_matter_is_a_model_index_of_the_test_scores():
    meta = read_front_matter(render_card(_record()))
    assert meta["library_name"] == "sentence-transformers"
    assert meta["base_model"] == "bert-base-uncased"
    (entry,) = meta["model-index"]
    assert entry["name"] == "csetrain-simcse_unsup-01234567"
    by_key = {m["args"]["key"]: m for r in entry["results"] for m in r["metrics"]}
    assert by_key["test/senteval/sts12/spearman"]["value"] == 68.4
    assert by_key["test/senteval/sts12/spearman"]["name"] == "spearman (senteval)"
    datasets = [r["dataset"]["name"] for r in entry["results"]]
    assert datasets == ["sts12", "SummEval", "SummEvalSummarization.v2"]


def test_every_score_names_its_protocol_and_summeval_its_version():
    assert protocol_of("test/senteval/sts12/spearman").startswith("SentEval")
    assert '"all" setting' in protocol_of("test/senteval/sts12/spearman")
    assert protocol_of("test/mteb/SummEval/cosine_spearman").endswith("SummEval v1")
    assert protocol_of("test/mteb/SummEvalSummarization.v2/x").endswith("SummEval v2")
    card = render_card(_record())
    assert "| test/senteval/sts12/spearman | 68.40 | 30.90 | SentEval" in card
    assert "| test/mteb/SummEval/cosine_spearman | 30.10 | — | MTEB" in card  # no start score


def test_training_section_states_base_paper_changes_data_and_selection():
    card = render_card(_record())
    assert "`bert-base-uncased` (revision: 86b5e0934494bd15c9632b12f734a8a67f723594)" in card
    assert "following arXiv:2104.08821" in card
    assert "| `trainer.lr` | `1e-05` | `3e-05` |" in card
    assert "| `wiki/wiki1m_head.txt` | `abcdef0123456789` | CC BY-SA |" in card
    assert "22,600 rows" in card
    assert "best 81.23 at step 250" in card and "never used to select" in card
    assert "csetrain 0.1.0, git `da45d00`" in card


def test_seed_statistics_and_prompts_when_the_run_has_them():
    plain = render_card(_record())
    assert "Seed statistics" not in plain and "Trained without prompts" in plain
    card = render_card(
        _record(
            seeds={
                "test/senteval/avg/spearman": {
                    "mean": 76.1,
                    "std": 0.4,
                    "ci_low": 75.6,
                    "ci_high": 76.5,
                }
            },
            seed_count=3,
            prompts={"query": "query: "},
            default_prompt_name="query",
        )
    )
    assert "one of 3 seeds" in card
    assert "| test/senteval/avg/spearman | 76.10 | 0.40 | [75.60, 76.50] |" in card
    assert "| query | 'query: ' |" in card and 'prompt_name="query"' in card
