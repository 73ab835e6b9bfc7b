"""Prompts travel with the model (csetrain/modeling/prompts.py), checked against
sentence-transformers itself: a model trained with data.instruction is exported with its prompts,
and `SentenceTransformer(path).encode(texts, prompt_name="query")` gives the embeddings csetrain's
evaluation computes, with the prompt tokens pooled (include_prompt=true) or left out (false).

Tolerance: csetrain's `encode` returns float32. Both sides compute in float64 here (the libraries
batch and pad differently, which moves float32 sums by ~1e-7 but float64 ones by ~1e-15), so the
only difference left is csetrain's final rounding to float32: half a float32 ulp, 2**-24 relative.
ATOL is 4x that at the largest magnitude; a prompt token pooled or not moves vectors by ~1e-2.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from csetrain.config import ConfigError
from csetrain.data.sources import instruction_prefix
from csetrain.eval.mteb_encoder import MTEBEncoder
from csetrain.eval.sts import STSEvaluator, read_pairs
from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer
from csetrain.modeling.prompts import carry_prompts, prompt_length

from .helpers import csetrain_in_process, shared_cache, small_sts

TASK = "Retrieve semantically similar text."
PREFIX = instruction_prefix(TASK)
TEXTS = ["a man plays a guitar", "two dogs run in the field", "rain", "the market fell today"]


def _atol(reference: torch.Tensor) -> float:
    return 4 * 2**-24 * float(reference.abs().max())


def _st(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").double()


def _st_encode(model, texts, **kwargs) -> torch.Tensor:
    return model.encode(texts, convert_to_tensor=True, batch_size=len(texts), **kwargs).cpu()


def _trained_folder(tmp_path, steps: int, include_prompt: bool, pooler: str = "mean"):
    """A tiny model trained `steps` steps (0: as built) on single-field data with an
    instruction, saved as training saves its best checkpoint."""
    from csetrain.app.settings import validate_settings
    from csetrain.app.store.tracker import NullTracker
    from csetrain.app.train import build
    from csetrain.loop import fit

    from .test_config import _compose

    cfg = _compose(
        [
            "experiment=demo",
            "model=tiny",
            f"model.pooler={pooler}",
            f"model.include_prompt={str(include_prompt).lower()}",
            f"+data.instruction='{TASK}'",
            f"trainer.max_steps={max(steps, 1)}",
            "trainer.batch_size=8",
            "trainer.eval_every=0",
            "trainer.progress=false",
            f"paths.output_dir={tmp_path}",
            f"paths.data_dir={small_sts()}",
            f"paths.cache_dir={shared_cache()}",
        ]
    )
    settings = validate_settings(cfg)
    components, _ = build(cfg, settings, tmp_path / "run", NullTracker())
    if steps:
        fit(components, settings.trainer)
    return components.checkpointer.save_best(components.encoder, steps, "none", 0.0)


@pytest.mark.parametrize(
    ("steps", "include_prompt", "pooler"),
    [
        (0, True, "mean"),
        (2, True, "mean"),
        (0, False, "mean"),
        (2, False, "mean"),
        (2, False, "cls"),
    ],
)
def test_exported_prompts_give_csetrains_eval_embeddings(tmp_path, steps, include_prompt, pooler):
    folder = _trained_folder(tmp_path, steps, include_prompt, pooler)
    saved = json.loads((folder / "config_sentence_transformers.json").read_text())
    # single-field data: both views carried the instruction, so it is the default prompt
    assert saved["prompts"] == {"query": PREFIX, "document": PREFIX}
    assert saved["default_prompt_name"] == "query"
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["include_prompt"] is include_prompt
    st = _st(folder)
    expected = _st_encode(st, TEXTS, prompt_name="query")
    encoder = load_sentence_encoder(folder).double()
    assert encoder.include_prompt is include_prompt
    evaluator = STSEvaluator(["stsb"], split="test", data_dir=str(small_sts()), protocol="mteb")
    ours = evaluator.encode(encoder, TEXTS)  # eval.prompt_name=null: the model's default
    torch.testing.assert_close(ours.double(), expected, atol=_atol(expected), rtol=0)
    evaluator.prompt_name = "query"
    ours = evaluator.encode(encoder, TEXTS)
    torch.testing.assert_close(ours.double(), expected, atol=_atol(expected), rtol=0)
    torch.testing.assert_close(_st_encode(st, TEXTS), expected, atol=1e-12, rtol=0)  # default
    # and the prompt matters: without it (or with its tokens pooled) the vectors move
    bare = _st_encode(st, TEXTS, prompt="")
    assert (bare - expected).abs().max() > 1e3 * _atol(expected)


def test_prompt_tokens_left_out_of_pooling_match_a_hand_mean(tiny_backbone):
    """include_prompt=False at inference: the mean over the sentence's own tokens (and [SEP]),
    with the prompt's [CLS] + tokens attended to but not averaged."""
    encoder = SentenceEncoder(tiny(dropout=0.0), pooler="mean", include_prompt=False).double()
    encoder.prompts = {"query": PREFIX}
    k = prompt_length(encoder.tokenizer, PREFIX)
    assert k == 1 + len(encoder.tokenizer(PREFIX, add_special_tokens=False)["input_ids"])
    tokens = encoder.tokenize([PREFIX + t for t in TEXTS])
    states = encoder.token_states(tokens["input_ids"], tokens["attention_mask"])
    mask = tokens["attention_mask"].clone()
    mask[:, :k] = 0
    hand = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(
        encoder.encode(TEXTS, prompt=PREFIX).double(), hand, atol=1e-6, rtol=0
    )
    # training rows carry the prompt in their ids: found there, packed or padded alike
    encoder.train()
    for packing in (False, True):
        encoder.packing = packing
        trained = encoder(tokens["input_ids"], tokens["attention_mask"])
        torch.testing.assert_close(trained, hand, atol=1e-10, rtol=0)
    bare = encoder.tokenize(TEXTS)  # rows without the prompt keep every token
    plain = SentenceEncoder(tiny(dropout=0.0), pooler="mean").double().train()
    torch.testing.assert_close(
        encoder(bare["input_ids"], bare["attention_mask"]),
        plain(bare["input_ids"], bare["attention_mask"]),
        atol=1e-10,
        rtol=0,
    )


def test_prompt_length_is_sentence_transformers_count(tmp_path, tiny_backbone):
    encoder = SentenceEncoder(tiny_backbone, pooler="mean")
    folder = save_sentence_transformer(encoder, tmp_path / "m")
    st = _st(folder)
    for prompt in (PREFIX, "query: ", "x"):
        assert prompt_length(encoder.tokenizer, prompt) == st[0]._get_prompt_length(prompt)


def _asymmetric_folder(tmp_path):
    """Pairs/triplets with an instruction: only the queries carried it (no default prompt)."""
    encoder = SentenceEncoder(tiny(), pooler="mean", include_prompt=False)
    carry_prompts(encoder, {"query": PREFIX, "document": ""})
    assert encoder.default_prompt_name is None
    return save_sentence_transformer(encoder, tmp_path / "asym")


def test_asymmetric_training_saves_query_and_document_without_a_default(tmp_path):
    folder = _asymmetric_folder(tmp_path)
    st = _st(folder)
    assert st.default_prompt_name is None
    queries, documents = _st_encode(st, TEXTS, prompt_name="query"), _st_encode(st, TEXTS)
    torch.testing.assert_close(st.encode_query(TEXTS, convert_to_tensor=True).cpu(), queries)
    torch.testing.assert_close(st.encode_document(TEXTS, convert_to_tensor=True).cpu(), documents)
    encoder = load_sentence_encoder(folder).double()
    atol = _atol(queries)
    torch.testing.assert_close(encoder.encode(TEXTS).double(), documents, atol=atol, rtol=0)
    # mteb's prompt_type picks the model's prompt of that name, as for sentence-transformers
    adapter = MTEBEncoder(encoder, batch_size=8)
    meta = SimpleNamespace(name="SomeRetrieval")
    for kind, expected in (("query", queries), ("document", documents), (None, documents)):
        got = adapter.encode(
            [{"text": TEXTS}],
            task_metadata=meta,
            hf_split="test",
            hf_subset="default",
            prompt_type=kind,
        )
        torch.testing.assert_close(torch.from_numpy(got).double(), expected, atol=atol, rtol=0)


def test_bad_prompt_name_is_one_line_naming_the_prompts(tmp_path):
    encoder = load_sentence_encoder(_asymmetric_folder(tmp_path))
    evaluator = STSEvaluator(
        ["stsb"], split="test", data_dir=str(small_sts()), protocol="mteb", prompt_name="passage"
    )
    with pytest.raises(ConfigError) as err:
        evaluator(encoder)
    message = str(err.value)
    assert "\n" not in message
    assert "eval.prompt_name='passage'" in message and "['document', 'query']" in message


def test_csetrain_eval_applies_a_saved_folders_prompts(tmp_path):
    folder = _asymmetric_folder(tmp_path)
    common = [
        "eval",
        "model=saved",
        f"model.path={folder}",
        "eval=stsb_test",
        "eval.protocol=mteb",
        "eval.diagnostics=false",
        f"paths.data_dir={small_sts()}",
        f"paths.output_dir={tmp_path / 'out'}",
        "tracking=none",
        "device=cpu",
    ]
    result = csetrain_in_process(*common, "eval.prompt_name=query")
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = (tmp_path / "out").rglob("eval_results.json")
    metric = json.loads(report.read_text())["metrics"]["mteb/stsb/spearman"]
    pairs = read_pairs(small_sts() / "sts" / "stsb" / "test.tsv", "test")
    st = _st(folder)
    first = _st_encode(st, pairs.first, prompt_name="query")
    second = _st_encode(st, pairs.second, prompt_name="query")
    cosines = torch.nn.functional.cosine_similarity(first, second).numpy()
    assert metric == pytest.approx(100 * spearmanr(cosines, pairs.gold).statistic, abs=1e-9)
    bad = csetrain_in_process(*common, "eval.prompt_name=passage")
    assert bad.returncode != 0
    lines = [line for line in (bad.stdout + bad.stderr).splitlines() if line.strip()]
    assert any(
        "eval.prompt_name='passage'" in line and "['document', 'query']" in line for line in lines
    )
    assert np.isfinite(metric)


def test_latent_attention_leaves_the_prompt_out_under_sentence_transformers_too(tmp_path):
    """csetrain's custom latent-attention module reads include_prompt from its config and applies
    sentence-transformers' prompt_length, so the folder's embeddings are csetrain's."""
    from sentence_transformers import SentenceTransformer

    sizes = {"num_latents": 4, "heads": 2, "dim_head": 8, "mlp_mult": 2}
    encoder = SentenceEncoder(
        tiny(), pooler="latent_attention", latent_attention=sizes, include_prompt=False
    )
    carry_prompts(encoder, {"query": PREFIX, "document": ""})
    folder = save_sentence_transformer(encoder, tmp_path / "latent")
    assert load_sentence_encoder(folder).include_prompt is False
    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True).double()
    expected = _st_encode(model, TEXTS, prompt_name="query")
    ours = load_sentence_encoder(folder).double().encode(TEXTS, prompt=PREFIX).double()
    torch.testing.assert_close(ours, expected, atol=_atol(expected), rtol=0)
    pooled = SentenceEncoder(tiny(), pooler="latent_attention", latent_attention=sizes).double()
    pooled.load_state_dict(load_sentence_encoder(folder).double().state_dict())
    assert (pooled.encode(TEXTS, prompt=PREFIX).double() - expected).abs().max() > 1e-4


def test_training_refuses_a_prompt_split_differently_in_context():
    """Byte-level BPE makes a trailing space its own token alone ('Ġ') but merges it into the
    next word in context ('Ġword'): sentence-transformers' count and the ids would disagree."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from csetrain.modeling.prompts import check_trainable

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([PREFIX + "word " * 5] * 20, vocab_size=300, min_frequency=1)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    model = SimpleNamespace(include_prompt=False, tokenizer=tokenizer, prompts={"query": PREFIX})
    with pytest.raises(ConfigError, match="model.include_prompt=false: the tokenizer splits"):
        check_trainable(model)
    check_trainable(SimpleNamespace(**{**vars(model), "prompts": {"query": PREFIX.rstrip()}}))
    check_trainable(SimpleNamespace(**{**vars(model), "include_prompt": True}))
