"""NV-Embed instruction prefixes: on the anchors (query side) of any data option, on both sentences
of an eval task's pairs, and in the tokenization cache key."""

import pytest
import torch
from omegaconf import OmegaConf

from csetrain.app.components import load_data
from csetrain.config import ASSETS_DIR, ConfigError
from csetrain.data.cache import cache_key, tokenized_dataset
from csetrain.data.sources import instruction_prefix
from csetrain.eval.sts import STSEvaluator

TASK = "Retrieve semantically similar text."


def _data(tmp_path, **extra):
    (tmp_path / "c.txt").write_text("a man plays a guitar\ntwo dogs run in a field\n")
    node = {
        "_target_": "csetrain.data.sources.TextLines",
        "files": ["c.txt"],
        "data_dir": str(tmp_path),
        "name": "t",
        **extra,
    }
    return OmegaConf.create(node)


def test_the_template_is_nv_embeds():
    assert instruction_prefix(TASK) == "Instruct: Retrieve semantically similar text.\nQuery: "


def test_anchors_start_with_the_prefix_ids_and_the_cache_key_changes(tmp_path, tiny_backbone):
    tokenizer = tiny_backbone.tokenizer
    bare = load_data(_data(tmp_path))
    instructed = load_data(_data(tmp_path, instruction=TASK))
    assert instructed.instruction == TASK and bare.instruction is None
    assert [r["anchor"] for r in instructed.records] == [
        instruction_prefix(TASK) + r["anchor"] for r in bare.records
    ]
    assert cache_key(instructed, tokenizer) != cache_key(bare, tokenizer)
    dataset = tokenized_dataset(instructed, tokenizer, tmp_path / "cache")
    prefix = tokenizer(instruction_prefix(TASK), add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(prefix) == (
        ["ins", "##truct", ":", "retrieve", "semantic", "##ally", "similar", "text", "."]
        + ["query", ":"]  # the newline is whitespace to WordPiece
    )
    for ids, bare_ids in zip(
        dataset["anchor_ids"], [tokenizer(r["anchor"])["input_ids"] for r in bare.records]
    ):
        assert ids == [tokenizer.cls_token_id] + prefix + bare_ids[1:]  # [CLS] prefix text [SEP]
    # the bare corpus is its own cache entry, untouched by the instructed one
    assert tokenized_dataset(bare, tokenizer, tmp_path / "cache")["anchor_ids"][0][1] != prefix[0]


def test_only_the_query_side_of_triplets_is_instructed(tmp_path):
    (tmp_path / "t.csv").write_text("sent0,sent1,hard_neg\npremise,entailed,contradicted\n")
    node = OmegaConf.create(
        {
            "_target_": "csetrain.data.sources.TripletCSV",
            "file": "t.csv",
            "data_dir": str(tmp_path),
            "instruction": TASK,
        }
    )
    (record,) = load_data(node).records
    assert record == {
        "anchor": instruction_prefix(TASK) + "premise",
        "positive": "entailed",
        "hard_negative": "contradicted",
    }


def test_bad_instruction_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="data.instruction="):
        load_data(_data(tmp_path, instruction=["not", "a", "string"]))


def test_training_tokens_carry_the_instruction_from_the_command_line(tmp_path, tiny_backbone):
    from .test_train import _run_tiny

    _, c = _run_tiny(tmp_path, [f"+data.instruction='{TASK}'", "trainer.max_steps=1"])
    prefix = tiny_backbone.tokenizer(instruction_prefix(TASK), add_special_tokens=False)
    anchor_ids = c.dataset["anchor_ids"][0]
    assert anchor_ids[1 : 1 + len(prefix["input_ids"])] == prefix["input_ids"]


def test_eval_instruction_prefixes_both_sentences_and_changes_embeddings(tiny_encoder):
    sample = ASSETS_DIR / "sample"
    plain = STSEvaluator(["stsb"], split="test", data_dir=str(sample))
    instructed = STSEvaluator(
        ["stsb"], split="test", data_dir=str(sample), instructions={"stsb": TASK}
    )
    first, second = plain.data["stsb"][0], instructed.data["stsb"][0]
    prefix = instruction_prefix(TASK)
    assert second.first == [prefix + s for s in first.first]
    assert second.second == [prefix + s for s in first.second]
    # what the encoder is asked to embed (its dedup key) differs, and so do the vectors
    assert set(instructed.sentences()).isdisjoint(plain.sentences())
    some = first.first[:8]
    bare = tiny_encoder.encode(some)
    with_prefix = tiny_encoder.encode([prefix + s for s in some])
    assert not torch.allclose(bare, with_prefix, atol=1e-3)
    with pytest.raises(ConfigError, match="eval.instructions: 'sts12' is not in eval.tasks"):
        STSEvaluator(["stsb"], split="test", data_dir=str(sample), instructions={"sts12": TASK})
