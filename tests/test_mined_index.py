"""mined_index: exact neighbours, the rank window, the false-negative margin, the refresh cadence,
live (gradient-carrying) negatives, checkpointable state, and 3 training steps."""

import math

import pytest
import torch
import torch.nn.functional as F

from csetrain.config import ConfigError
from csetrain.data.cache import tokenized_dataset
from csetrain.data.collate import Batch, pad
from csetrain.data.sources import TextLines
from csetrain.modeling.backbones import minilm_l6, tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.negatives.mined_index import MinedIndex, nearest_neighbours, pick_in_window

from .test_objectives import _unsup_batch
from .tolerances import EPS32

SENTENCES = [
    "a man plays a guitar on stage",
    "two dogs run across a green field",
    "the stock market fell sharply today",
    "a child reads a book in the library",
    "a woman is slicing an onion",
    "the train arrived late at the station",
    "scientists discovered a new species of frog",
    "he painted the fence white last summer",
    "the orchestra played a symphony by mozart",
    "rain is expected over the weekend",
    "the team won the championship game",
    "she planted tomatoes in her garden",
]


def _bound(miner, encoder, tmp_path, lines=SENTENCES):
    """The miner bound as train.py binds it: to the encoder and the tokenized corpus."""
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    corpus = TextLines(files=["corpus.txt"], data_dir=str(tmp_path), name="t").load()
    miner.bind(encoder, tokenized_dataset(corpus, encoder.tokenizer, tmp_path / "cache"))
    return miner


def test_index_returns_the_true_nearest_neighbours():
    gen = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(500, 16, generator=gen), dim=-1)
    queries = F.normalize(torch.randn(37, 16, generator=gen), dim=-1)
    scores, indices = nearest_neighbours(queries, keys, k=20, chunk_size=8)  # several chunks
    brute = queries @ keys.T  # (37, 500)
    expected = brute.argsort(dim=1, descending=True)[:, :20]
    assert torch.equal(indices, expected)
    assert torch.allclose(scores, brute.gather(1, expected), atol=1e-6)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    assert nearest_neighbours(queries, keys[:5], k=20)[1].shape == (37, 5)  # k capped at N


def _ranked(num_queries, num_keys):
    """Scores/indices where query q's neighbour of rank r is key (q + r) % num_keys with score
    1 - r/100 (a known ranking)."""
    ranks = torch.arange(num_keys)
    indices = (torch.arange(num_queries)[:, None] + ranks[None]) % num_keys
    scores = (1 - ranks.float() / 100).expand(num_queries, num_keys).clone()
    return scores, indices


def test_rank_window_is_respected():
    scores, indices = _ranked(6, 60)
    positive_sim = torch.full((6,), 2.0)  # nothing is a false negative
    seen = set()
    for seed in range(40):
        picked = pick_in_window(
            scores, indices, positive_sim, (10, 15), 0.0, torch.Generator().manual_seed(seed)
        )
        rank = (picked - torch.arange(6)) % 60  # back from key to rank
        assert ((rank >= 10) & (rank < 15)).all()
        seen |= set(rank.tolist())
    assert seen == set(range(10, 15))  # every rank of the window gets drawn


def test_false_negatives_above_the_margin_are_dropped():
    scores, indices = _ranked(3, 60)  # rank r has score 1 - r/100
    # Window ranks 10..19 have scores 0.90..0.81; a candidate survives if score <= pos - 0.05.
    # query 0: pos 0.98 -> all survive; query 1: pos 0.83 -> none (all > 0.78): no negative;
    # query 2: pos 0.90 -> only scores <= 0.85, i.e. ranks 15..19
    positive_sim = torch.tensor([0.98, 0.83, 0.90])
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        picked = pick_in_window(scores, indices, positive_sim, (10, 20), 0.05, gen)
        assert picked[1] == -1
        rank2 = (picked[2] - 2) % 60
        assert 15 <= rank2 < 20  # 1 - r/100 <= 0.85  <=>  r >= 15
        assert 10 <= (picked[0] - 0) % 60 < 20


def test_refresh_cadence_and_live_negatives(tiny_encoder, tmp_path):
    miner = MinedIndex(refresh_every=3, sample_size=None, ranks=(1, 4))
    tiny_encoder.double()  # see the index check below
    batch = _unsup_batch(tiny_encoder)
    anchors = tiny_encoder(batch.input_ids[:4], batch.attention_mask[:4])
    with pytest.raises(ConfigError, match="was not bound"):
        miner.extra_negatives(anchors, {"anchor": anchors})
    _bound(miner, tiny_encoder, tmp_path)
    assert int(miner.built_at) == -1  # built lazily: a resume restores its saved index instead
    assert miner.extra_negatives(anchors.detach(), {"anchor": anchors}) is not None  # step 1
    built = [int(miner.built_at)]
    for _ in range(7):
        miner.after_optimizer_step(tiny_encoder, batch)
        built.append(int(miner.built_at))
    assert built == [0, 0, 0, 3, 3, 3, 6, 6]  # before step 1, then after every 3 steps
    assert miner.index_embeddings.shape == (len(SENTENCES), 32)
    assert sorted(miner.index_rows.tolist()) == list(range(len(SENTENCES)))
    # The index holds the model's own (eval-mode) training embeddings of the corpus rows.
    # Compared in float64 (the index was built from batches of another padding width); the
    # index stores float32, normalised in float32: 32 summed squares, a few ulps for the rest.
    tiny_encoder.eval()
    row = int(miner.index_rows[0])
    ids = tiny_encoder.tokenizer([SENTENCES[row]], return_tensors="pt")
    direct = F.normalize(tiny_encoder(ids["input_ids"], ids["attention_mask"]), dim=-1)
    atol = (32 + 4) * EPS32  # unit vectors: entries <= 1
    assert torch.allclose(miner.index_embeddings[0].double(), direct[0], rtol=0, atol=atol)
    # Mined negatives are live: a loss on them sends gradient into the encoder.
    tiny_encoder.train()
    tiny_encoder.zero_grad()
    anchors = tiny_encoder(batch.input_ids[:4], batch.attention_mask[:4])
    negatives = miner.extra_negatives(anchors, {"anchor": anchors})
    assert negatives is not None and negatives.embeddings.shape == (4, 32)
    assert negatives.embeddings.requires_grad and not negatives.aligned
    # (a plain sum would be ~0 by construction: BERT's last LayerNorm output sums to beta)
    weights = torch.randn(negatives.embeddings.shape, generator=torch.Generator().manual_seed(0))
    (negatives.embeddings * weights).sum().backward()
    assert tiny_encoder.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_state_round_trips_through_a_fresh_miner(tiny_encoder, tmp_path):
    miner = _bound(MinedIndex(refresh_every=1, sample_size=8, ranks=(1, 4)), tiny_encoder, tmp_path)
    miner.after_optimizer_step(tiny_encoder, _unsup_batch(tiny_encoder))
    fresh = _bound(MinedIndex(refresh_every=1, sample_size=8, ranks=(1, 4)), tiny_encoder, tmp_path)
    fresh.load_state_dict(miner.state_dict())
    assert torch.equal(fresh.index_embeddings, miner.index_embeddings)
    assert torch.equal(fresh.index_rows, miner.index_rows) and int(fresh.steps) == 1


def test_bad_settings_are_one_clear_line(tiny_encoder):
    with pytest.raises(ConfigError, match=r"negative_mining.ranks=\[50, 10\]"):
        MinedIndex(ranks=[50, 10])
    with pytest.raises(ConfigError, match="needs the tokenized training corpus"):
        MinedIndex().bind(tiny_encoder, None)


@pytest.mark.parametrize("guide", [None, "tiny"])
def test_three_training_steps(tmp_path, guide):
    from .test_train import _run_tiny

    tracker, components = _run_tiny(
        tmp_path,
        [
            "negative_mining=mined_index",
            "objective=simcse_unsup",
            "negative_mining.refresh_every=2",
            "negative_mining.sample_size=256",
            "trainer.max_steps=3",
            *([f"negative_mining.guide={guide}"] if guide else []),
        ],
    )
    miner = components.objective.miner
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert int(miner.steps) == 3 and int(miner.built_at) == 2  # built before step 1, after step 2
    assert miner.index_embeddings.shape == (256, 32)
    assert miner.last_mined > 0  # every step trained with mined negatives
    if guide:  # it embedded each index sample, and the optimizer never saw it
        assert len(miner._guide_store) >= 256
        guide_params = {id(p) for p in miner.guide.encoder.parameters()}
        optimized = {id(p) for g in components.optimizer.param_groups for p in g["params"]}
        assert not guide_params & optimized


# --- the guide model (GISTEmbed) ----------------------------------------------------------------

ANCHOR = SENTENCES[0]
OTHER_ROW = 2  # "the stock market fell sharply today"
DUPLICATE_ROW = len(SENTENCES)  # a copy of the anchor: a false negative by construction


def _anchor_batch(encoder):
    """One anchor whose positive is itself (a dropout twin), as the collator lays it out."""
    ids = encoder.tokenizer([ANCHOR])["input_ids"][0]
    input_ids, mask = pad([ids, ids], encoder.tokenizer.pad_token_id)
    return Batch(input_ids, mask, fields=("anchor", "positive"), size=1)


def _hand_index(miner):
    """The trained model's (hand-made, 2-d) view: the duplicate looks dissimilar (cos 0.3), the
    other sentence similar (cos 0.9) to the anchor (1, 0); its positive is at cos 0.5."""
    miner.index_rows = torch.tensor([DUPLICATE_ROW, OTHER_ROW])
    miner.index_embeddings = torch.tensor([[0.3, math.sqrt(1 - 0.09)], [0.9, math.sqrt(0.19)]])
    miner.built_at.fill_(0)
    return torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, math.sqrt(0.75)]])


def test_guide_and_model_disagree_and_the_guide_decides(tiny_encoder, tmp_path):
    corpus = SENTENCES + [ANCHOR]
    kwargs = {"sample_size": None, "ranks": (0, 2), "margin": 0.01}
    own = _bound(MinedIndex(**kwargs), tiny_encoder, tmp_path, corpus)
    guide = SentenceEncoder(minilm_l6(), pooler="mean")  # what `guide=minilm-l6` builds
    guided = _bound(MinedIndex(guide=guide, **kwargs), tiny_encoder, tmp_path, corpus)
    anchors, positives = _hand_index(own)
    _hand_index(guided)
    guided.observe(_anchor_batch(tiny_encoder))
    # the guide's view, computed here from its own encode(): the copy is the anchor (cos 1), the
    # other sentence is far from it, and the positive is the anchor itself (cos 1)
    vectors = F.normalize(guided.guide.encoder.encode([ANCHOR, SENTENCES[OTHER_ROW]]), dim=-1)
    assert float(vectors[0] @ vectors[1]) < 0.5
    scores, positive_sim = guided._guide_scores(torch.tensor([[0, 1]]), 1)
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5) and positive_sim[0] == pytest.approx(1.0)
    assert scores[0, 1] == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-5)
    for step in range(10):  # a fresh draw each step; the rule leaves one candidate either way
        own.steps.fill_(step)
        guided.steps.fill_(step)
        guided.observe(_anchor_batch(tiny_encoder))
        # the model alone keeps the copy (0.3 <= 0.5 - 0.01) and drops the other (0.9 > 0.49)
        assert int(own.index_rows[own.mine(anchors, positives)[0]]) == DUPLICATE_ROW
        # the guide drops the copy (1 > 1 - 0.01) and keeps the other sentence
        assert int(guided.index_rows[guided.mine(anchors, positives)[0]]) == OTHER_ROW


def _word_level_encoder(sentences):
    """A guide with its own vocabulary (whole words): not the trained model's WordPiece."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from csetrain.modeling.backbones import Backbone
    from csetrain.modeling.encoder import SentenceEncoder

    words = sorted({w for s in sentences for w in s.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
    )
    return SentenceEncoder(
        Backbone(BertModel(config, add_pooling_layer=False), fast, "words"), "mean"
    )


def test_a_guide_with_another_vocabulary_reads_the_sentences(tiny_encoder, tmp_path):
    from csetrain.modeling.export import save_sentence_transformer

    guide = _word_level_encoder(SENTENCES)
    assert guide.tokenizer.get_vocab() != tiny_encoder.tokenizer.get_vocab()
    save_sentence_transformer(guide, tmp_path / "guide")  # a saved folder as the guide
    miner = MinedIndex(
        refresh_every=1, sample_size=None, ranks=(1, 4), guide=str(tmp_path / "guide")
    )
    _bound(miner, tiny_encoder, tmp_path)
    # corpus rows reach the guide as text: its embeddings are its own encode() of the sentences
    expected = F.normalize(guide.encode(SENTENCES), dim=-1)
    rows = torch.arange(len(SENTENCES))
    assert torch.allclose(miner.guide_rows(rows), expected, atol=1e-5)
    assert len(miner._guide_store) == len(SENTENCES)
    batch = _unsup_batch(tiny_encoder)
    miner.observe(batch)
    anchors = tiny_encoder(batch.input_ids[:4], batch.attention_mask[:4])
    assert miner.extra_negatives(anchors, {"anchor": anchors}) is not None  # builds the index
    miner.after_optimizer_step(tiny_encoder, batch)  # a refresh: every row is cached already
    assert len(miner._guide_store) == len(SENTENCES)
    # frozen and outside the module tree: nothing to optimise, nothing in the checkpoint
    assert list(miner.parameters()) == []
    assert set(miner.state_dict()) == set(MinedIndex().state_dict())
    assert all(not p.requires_grad for p in miner.guide.encoder.parameters())


def test_guide_errors_are_one_clear_line(tiny_encoder, tmp_path):
    with pytest.raises(
        ConfigError, match=r"negative_mining.guide='nope' is neither a model option"
    ):
        MinedIndex(guide="nope")
    guide = SentenceEncoder(tiny(), pooler="cls")  # what `guide=tiny` builds
    miner = _bound(MinedIndex(sample_size=None, ranks=(1, 4), guide=guide), tiny_encoder, tmp_path)
    anchors = torch.randn(4, 32)
    miner.refresh(tiny_encoder)
    with pytest.raises(ConfigError, match="needs this step's batch"):
        miner.mine(anchors, anchors)
