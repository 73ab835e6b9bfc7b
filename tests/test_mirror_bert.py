"""Mirror-BERT: NT-Xent equals a hand computation, the objective applies it to both views,
drophead changes training outputs only, and the objective trains end to end."""

import math

import numpy as np
import pytest
import torch

from csetrain.app.settings import instantiate
from csetrain.augmentations.span_mask import SpanMask
from csetrain.data.collate import Collator
from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.negatives.base import NegativeMiner, Negatives
from csetrain.objectives.mirror_bert import MirrorBERT, nt_xent

from .test_config import _compose
from .tolerances import softmax_loss_atol

TEXTS = [
    "A man is playing a large flute on the stage.",
    "Two dogs are running through a field of grass.",
    "The stock market fell sharply on Tuesday morning.",
    "short one",
]


def _nt_xent_by_hand(first, second, temperature, extra=None):
    z = np.concatenate([first, second])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    negatives_only = (
        [] if extra is None else list(extra / np.linalg.norm(extra, axis=1, keepdims=True))
    )
    n, total = len(first), 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        positive = math.exp(float(z[i] @ z[partner]) / temperature)
        denominator = positive
        for k in range(2 * n):
            if k not in (i, partner):
                denominator += math.exp(float(z[i] @ z[k]) / temperature)
        for e in negatives_only:
            denominator += math.exp(float(z[i] @ e) / temperature)
        total += -math.log(positive / denominator)
    return total / (2 * n)


def test_nt_xent_by_hand():
    gen = torch.Generator().manual_seed(0)
    first, second, extra = (torch.randn(s, 5, generator=gen) for s in (3, 3, 2))
    loss, logits, targets = nt_xent(first, second, 0.5)
    assert logits.shape == (6, 6) and targets.tolist() == [3, 4, 5, 0, 1, 2]
    # float32 against the float64 hand sum: cosines of 5 dims, softmax over up to 8 candidates
    atol = softmax_loss_atol(terms=8, max_abs_logit=1 / 0.5, sides=1)
    assert loss.item() == pytest.approx(
        _nt_xent_by_hand(first.numpy(), second.numpy(), 0.5), abs=atol
    )
    loss, logits, _ = nt_xent(first, second, 0.5, extra)
    assert logits.shape == (6, 8)
    expected = _nt_xent_by_hand(first.numpy(), second.numpy(), 0.5, extra.numpy())
    assert loss.item() == pytest.approx(expected, abs=atol)


def _batch(encoder, step=0):
    tok = encoder.tokenizer
    collate = Collator(
        ("anchor",),
        SpanMask(),
        tok.pad_token_id,
        set(tok.all_special_ids),
        augmented_positive=True,
        seed=0,
        tokenizer=tok,
        max_length=32,
    )
    ids = tok(TEXTS, truncation=True, max_length=32)["input_ids"]
    return collate({"anchor_ids": ids, "anchor": TEXTS}, step)


class _FixedNegatives(NegativeMiner):
    def __init__(self, embeddings):
        super().__init__()
        self.embeddings = embeddings

    def extra_negatives(self, anchors, views):
        return Negatives(self.embeddings, aligned=False)


def test_objective_is_nt_xent_of_both_views_plus_miner_negatives(tiny_encoder):
    tiny_encoder.eval()
    batch = _batch(tiny_encoder)
    objective = MirrorBERT(temperature=0.04)
    views = objective.embed(tiny_encoder, batch)
    assert not torch.allclose(views["anchor"][:3], views["positive"][:3])  # masked text differs
    expected, _, _ = nt_xent(views["anchor"], views["positive"], 0.04)
    assert objective(tiny_encoder, batch).loss.item() == pytest.approx(expected.item(), abs=1e-5)
    extra = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    with_extra = MirrorBERT(miner=_FixedNegatives(extra), temperature=0.04)
    expected, _, _ = nt_xent(views["anchor"], views["positive"], 0.04, extra)
    assert with_extra(tiny_encoder, batch).loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_finite_loss_and_gradients_reach_the_encoder(tiny_encoder):
    tiny_encoder.train()
    out = MirrorBERT(drophead=0.2)(tiny_encoder, _batch(tiny_encoder))
    assert math.isfinite(out.loss.item()) and 0.0 <= out.metrics["acc"].item() <= 1.0
    out.loss.backward()
    assert tiny_encoder.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_drophead_changes_training_outputs_only():
    encoder = SentenceEncoder(tiny(dropout=0.0), pooler="mean")  # no dropout: drophead alone
    tokens = encoder.tokenize(TEXTS)
    args = tokens["input_ids"], tokens["attention_mask"]
    encoder.train()
    with torch.no_grad():
        plain = encoder(*args)
        torch.manual_seed(0)
        with encoder.drophead(0.5):
            dropped = encoder(*args)
            torch.manual_seed(0)
            again = encoder(*args)
        after = encoder(*args)
        encoder.eval()
        with encoder.drophead(0.5):
            evaluated = encoder(*args)
    assert not torch.allclose(plain, dropped)  # heads were dropped in training mode
    assert torch.equal(dropped, again)  # drawn from torch's RNG: seedable
    assert torch.allclose(plain, after)  # the hooks are gone after the block
    assert torch.allclose(plain, evaluated, atol=1e-6)  # eval mode: no drophead
    assert all(not m._forward_hooks for m in encoder.transformer.modules())


@pytest.mark.parametrize("extra", [[], ["objective.drophead=0.1"]])
def test_three_steps_end_to_end(tmp_path, extra):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(tmp_path, ["objective=mirror_bert", "trainer.max_steps=3", *extra])
    assert isinstance(c.objective, MirrorBERT) and isinstance(c.collator.augmentation, SpanMask)
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_experiment_carries_the_official_recipe(data_dir):
    cfg = _compose(["experiment=mirror_bert_bert_base", f"paths.data_dir={data_dir}"])
    assert (cfg.trainer.batch_size, cfg.trainer.lr, cfg.trainer.weight_decay) == (200, 2e-5, 0.01)
    assert (cfg.objective.temperature, cfg.data.max_length, cfg.model.pooler) == (0.04, 50, "mean")
    assert (cfg.trainer.eval_every, cfg.trainer.schedule, cfg.trainer.max_grad_norm) == (
        0,
        "constant",
        0.0,
    )
    corpus = instantiate(cfg.data).load()
    assert cfg.trainer.max_steps == len(corpus.records) // cfg.trainer.batch_size  # one epoch
