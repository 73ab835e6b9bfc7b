"""positive_aware: NV-Retriever's TopK-PercPos rule on hand-made scores, and the online miner
that applies it to MinedIndex's refreshed index."""

import pytest
import torch

from csetrain.config import ConfigError
from csetrain.modeling.backbones import minilm_l6
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.negatives.mined_index import nearest_neighbours
from csetrain.negatives.positive_aware import PositiveAware, topk_percpos

from .test_mined_index import _bound
from .test_objectives import _unsup_batch


def test_topk_percpos_keeps_the_best_candidates_below_95_percent_of_the_positive():
    # candidates best first; positive scores 0.8 / inf / 0.5
    scores = torch.tensor(
        [
            [0.90, 0.80, 0.70, 0.50],  # threshold 0.95 * 0.8 = 0.76: 0.70 and 0.50 survive
            [0.90, 0.80, 0.70, 0.50],  # no positive (inf): every candidate survives
            [float("inf"), 0.40, 0.30, 0.20],  # inf = the row's own positive: never kept
        ]
    )
    indices = torch.tensor([[3, 1, 2, 0], [3, 1, 2, 0], [7, 5, 6, 4]])
    positive = torch.tensor([0.8, float("inf"), 0.5])  # row 3: threshold 0.475
    assert topk_percpos(scores, indices, positive, 2, 0.95).tolist() == [
        [2, 0],
        [3, 1],
        [5, 6],
    ]
    assert topk_percpos(scores, indices, positive, 3, 0.95).tolist() == [
        [2, 0, -1],
        [3, 1, 2],
        [5, 6, 4],
    ]
    # fraction 1.0: a candidate tied with the positive is kept (<=), one above it is not
    tied = topk_percpos(torch.tensor([[0.81, 0.8]]), torch.tensor([[0, 1]]), positive[:1], 2, 1.0)
    assert tied.tolist() == [[1, -1]]


def test_online_pick_uses_the_rank_window_and_returns_several_negatives():
    miner = PositiveAware(fraction=0.95, num_negatives=2, ranks=(1, 4))
    scores = torch.tensor([[1.0, 0.9, 0.6, 0.5, 0.1]])  # rank 0: the anchor itself
    indices = torch.tensor([[0, 4, 3, 2, 1]])
    picked = miner.pick(scores, indices, torch.tensor([0.7]), gen=None)
    assert picked.tolist() == [[3, 2]]  # 0.9 > 0.665 dropped; rank 4 (0.1) is outside [1, 4)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"fraction": 1.5}, "fraction"), ({"num_negatives": 0}, "num_negatives")],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"negative_mining.{key}"):
        PositiveAware(**kwargs)


def test_online_miner_returns_live_negatives_that_pass_the_rule(tmp_path):
    """Bound to a corpus like mined_index: num_negatives per anchor, each scoring at most
    fraction x sim(anchor, positive) under the trained model, with gradient. MiniLM, not the
    random tiny BERT: that one scores every pair ~1.0, so no rule could tell them apart."""
    encoder = SentenceEncoder(minilm_l6(), pooler="mean").eval()  # eval: no dropout
    miner = _bound(PositiveAware(fraction=0.95, num_negatives=2, sample_size=None), encoder, tmp_path)  # fmt: skip
    batch = _unsup_batch(encoder)
    anchors = encoder(batch.input_ids[:4], batch.attention_mask[:4])
    positives = anchors * 1.0  # sim(anchor, positive) = 1: threshold 0.95
    negatives = miner.extra_negatives(anchors, {"anchor": anchors, "positive": positives})
    assert negatives is not None and negatives.embeddings.requires_grad and not negatives.aligned
    assert miner.last_mined == 8 and negatives.embeddings.shape == (8, 384)
    positions = miner.mine(anchors, positives)  # (4, 2) index positions, best first
    unit = torch.nn.functional.normalize
    q = unit(anchors.detach(), dim=-1)
    scores, _ = nearest_neighbours(q, miner.index_embeddings, 2)
    assert (scores[:, 0] > 0.75).all()  # the threshold is not trivially far above every candidate
    for i, row in enumerate(positions.tolist()):
        picked = [float(q[i] @ miner.index_embeddings[j]) for j in row]
        assert all(s <= 0.95 for s in picked) and picked == sorted(picked, reverse=True)
