"""CCP: positives are neighbours in the document's window, the asymmetric BN's two branches
use different statistics, the bank is a FIFO of detached keys that checkpoints and resumes, the
loss is the mean of two masked InfoNCE directions, and it trains end to end."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from csetrain.app.settings import instantiate
from csetrain.config import ASSETS_DIR, ConfigError
from csetrain.data.collate import Batch, Collator
from csetrain.data.neighbours import NeighbourPairs, neighbour_pairs, read_documents
from csetrain.losses import info_nce
from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.negatives.momentum_queue import MomentumQueue
from csetrain.objectives.ccp import CCP, AsymmetricBatchNorm, duplicate_mask, sentence_ids

from .helpers import csetrain_cli
from .test_config import _compose

SAMPLE = ASSETS_DIR / "sample"


# --- data: (center, context) pairs ---------------------------------------------------------


def test_neighbour_pairs_by_hand():
    assert neighbour_pairs(4, 1) == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    assert neighbour_pairs(3, 2) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert neighbour_pairs(1, 3) == []


def test_pairs_stay_inside_documents_and_files(tmp_path):
    (tmp_path / "a.txt").write_text("a0\na1\n a2 \n\n\nb0\nb1\n")
    (tmp_path / "c.txt").write_text("c0\n")  # one sentence: no pair, and never b1's neighbour
    corpus = NeighbourPairs(["a.txt", "c.txt"], data_dir=str(tmp_path), window=2).load()
    pairs = {(r["anchor"], r["positive"]) for r in corpus.records}
    a = {(f"a{i}", f"a{j}") for i in range(3) for j in range(3) if i != j}
    assert pairs == a | {("b0", "b1"), ("b1", "b0")}
    assert len(corpus.records) == len(pairs) and corpus.fields == ("anchor", "positive")
    assert corpus.name == "neighbours-w2"  # the window keys the tokenization cache
    cut = NeighbourPairs(["a.txt"], data_dir=str(tmp_path), window=1, max_sentences=4).load()
    assert {(r["anchor"], r["positive"]) for r in cut.records} == {
        ("a0", "a1"),
        ("a1", "a0"),
        ("a1", "a2"),
        ("a2", "a1"),
    }  # b0 kept alone: no pair


def test_bad_window_and_no_pairs_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data.window=0"):
        NeighbourPairs(["a.txt"], data_dir=str(tmp_path), window=0)
    (tmp_path / "one.txt").write_text("only\n\nsentences\n")
    with pytest.raises(ConfigError, match="no document of 2 or more sentences"):
        NeighbourPairs(["one.txt"], data_dir=str(tmp_path)).load()


def test_sample_positive_is_a_neighbour_in_its_document():
    corpus = instantiate(_compose(["data=sample_neighbours"]).data).load()
    documents = read_documents(SAMPLE / "wiki" / "wikitext2_sample.txt")
    assert [len(d) for d in documents] == [37, 158, 86]  # three articles
    where = {}
    for d, doc in enumerate(documents):
        for i, sentence in enumerate(doc):
            where.setdefault(sentence, set()).add((d, i))
    for record in corpus.records:
        assert any(
            d == e and 1 <= abs(i - j) <= 2
            for d, i in where[record["anchor"]]
            for e, j in where[record["positive"]]
        ), record
    assert len(corpus.records) == sum(4 * len(d) - 6 for d in documents)  # 2w(n) - w(w+1)


def test_wiki_neighbours_reads_the_data_pack_as_one_document(data_dir):
    cfg = _compose(["objective=ccp", f"paths.data_dir={data_dir}"])  # the objective's companion
    corpus = instantiate(cfg.data).load()
    assert len(corpus.records) == 4 * 9156 - 6  # 9,156 sentences, window 2, no boundaries


# --- asymmetric batch normalisation --------------------------------------------------------


def test_asymmetric_bn_branches_use_different_statistics():
    bn = AsymmetricBatchNorm(2, momentum=0.1, eps=1e-10)
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])  # mean (3, 6); var 8/3, 32/3 (biased)
    queries = bn(x, batch_statistics=True)
    expected = (x - torch.tensor([3.0, 6.0])) / torch.tensor([8 / 3, 32 / 3]).sqrt()
    assert torch.allclose(queries, expected)
    # first batch: weight max(0.1, 1/1) = 1, so the running estimates are its own (unbiased var)
    assert torch.allclose(bn.running_mean, torch.tensor([3.0, 6.0]))
    assert torch.allclose(bn.running_var, torch.tensor([4.0, 16.0]))
    z = torch.tensor([[3.0, 6.0], [7.0, 14.0]])
    keys = bn(z, batch_statistics=False)  # (z - running mean) / running std, nothing updated
    assert torch.allclose(keys, torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    assert torch.allclose(bn.running_mean, torch.tensor([3.0, 6.0])) and int(bn.updates) == 1
    # a key row does not depend on the other rows; a query row does (batch statistics)
    other = torch.tensor([[3.0, 6.0], [-50.0, 1.0]])
    assert torch.equal(bn(other, batch_statistics=False)[0], keys[0])
    before = (bn.running_mean.clone(), bn.running_var.clone())
    moved = bn(torch.tensor([[1.0, 2.0], [3.0, 6.0], [50.0, 10.0]]), batch_statistics=True)
    assert not torch.allclose(moved[0], queries[0])
    # second batch: weight max(0.1, 1/2) = 0.5
    assert torch.allclose(bn.running_mean, 0.5 * before[0] + 0.5 * torch.tensor([18.0, 6.0]))


def _bound(bank_size=5, dim=32):
    objective = CCP(bank_size=bank_size, temperature=0.1)
    objective.bind(SentenceEncoder(tiny(hidden_size=dim), pooler="cls"))
    return objective


def _fake_step(seed, size=2, dim=32):
    """Pooled views (as the encoder would give) and a batch of distinct sentences."""
    gen = torch.Generator().manual_seed(seed)
    views = {
        f: torch.randn(size, dim, generator=gen).requires_grad_() for f in ("anchor", "positive")
    }
    ids = torch.arange(2 * size).view(-1, 1) + 1000 * seed + torch.tensor([[101, 7, 102]])
    batch = Batch(ids, torch.ones_like(ids), ("anchor", "positive"), size)
    return views, batch


def test_keys_use_the_running_statistics_from_before_the_step():
    objective = _bound()
    objective.loss(*_fake_step(0))  # a first batch sets the running statistics
    norm = objective.head.norm
    old_mean, old_var = norm.running_mean.clone(), norm.running_var.clone()
    views, batch = _fake_step(1)
    out = objective.loss(views, batch)
    head = objective.head

    def project(x, mean, var):
        h = F.batch_norm(head.first(x), mean, var, norm.weight, norm.bias, False, 0.0, norm.eps)
        return F.normalize(head.second(h), dim=-1)

    keys = {f: project(views[f], old_mean, old_var) for f in views}
    assert torch.allclose(objective._pending[0], torch.cat([keys["anchor"], keys["positive"]]))
    # queries: this batch's statistics, anchors then positives, each moving the running ones
    queries = {}
    for f in ("anchor", "positive"):
        h = head.first(views[f])
        queries[f] = F.normalize(
            head.second(F.batch_norm(h, None, None, norm.weight, norm.bias, True)), dim=-1
        )
    targets = torch.arange(2)
    forward, _ = info_nce(queries["anchor"], keys["positive"], targets, 0.1)
    backward, _ = info_nce(queries["positive"], keys["anchor"], targets, 0.1)
    assert out.loss.item() == pytest.approx((forward.item() + backward.item()) / 2, rel=1e-5)
    assert not torch.allclose(norm.running_mean, old_mean)  # the queries updated them


def test_bank_is_a_fifo_of_detached_keys_of_its_size():
    objective = _bound(bank_size=5)
    seen_keys, seen_ids = [], []
    for step in range(3):
        views, batch = _fake_step(step)
        objective.loss(views, batch)
        if step > 0:  # the first step's keys (normalised by the (0, 1) prior) are not banked
            seen_keys.append(objective._pending[0])
            seen_ids.append(sentence_ids(batch.input_ids, batch.attention_mask))
        else:
            assert objective._pending is None
        objective.after_optimizer_step(None, batch)
    assert int(objective.bank.filled) == 5  # 2 banked steps x 4 keys, capped at 5
    # oldest dropped, newest last
    assert torch.equal(objective.bank.keys, torch.cat(seen_keys)[-5:])
    assert torch.equal(objective.bank.ids, torch.cat(seen_ids)[-5:])
    assert not objective.bank.keys.requires_grad and objective._pending is None
    # bank keys enter the next loss as negatives: 2 in-batch keys + 5 banked
    views, batch = _fake_step(3)
    _, logits, masked = objective.predict(
        objective.head(views["anchor"], True),
        sentence_ids(batch.input_ids[:2], batch.attention_mask[:2]),
        objective.head(views["positive"], False),
        sentence_ids(batch.input_ids[2:], batch.attention_mask[2:]),
        torch.arange(2),
    )
    assert logits.shape == (2, 7) and not masked.any()


def test_repeats_of_the_query_or_target_sentence_are_masked():
    ids = torch.tensor([[101, 5, 6, 102, 0], [101, 7, 102, 0, 0], [101, 5, 6, 102, 0]])
    mask = (ids != 0).long()
    hashed = sentence_ids(ids, mask)
    assert hashed[0] == hashed[2] and hashed[0] != hashed[1]
    wider = torch.cat([ids, torch.zeros(3, 4, dtype=torch.long)], dim=1)  # more padding
    assert torch.equal(sentence_ids(wider, (wider != 0).long()), hashed)
    swapped = torch.tensor([[101, 6, 5, 102, 0]])
    assert sentence_ids(swapped, (swapped != 0).long()) != hashed[0]
    # a reverse pair in one batch (row 0: s1 -> s2, row 1: s2 -> s1) and a banked copy of s2
    s1, s2, s3 = 11, 22, 33
    queries = torch.tensor([s1, s2])
    candidates = torch.tensor([s2, s1, s2, s3])  # keys [s2, s1] | bank [s2, s3]
    masked = duplicate_mask(queries, candidates, torch.arange(2))
    # row 0 (s1, target s2): s1 is itself, the banked s2 is its target again; row 1 (s2, target
    # s1): both s2 copies are itself
    assert masked.tolist() == [[False, True, True, False], [True, False, True, False]]


def test_a_miner_other_than_in_batch_is_refused():
    with pytest.raises(ConfigError, match="set negative_mining=in_batch"):
        CCP(miner=MomentumQueue())


# --- with the encoder ----------------------------------------------------------------------


def _sample_batch(encoder, rows=6):
    corpus = instantiate(_compose(["data=sample_neighbours"]).data).load()
    tok = encoder.tokenizer
    records = corpus.records[:: len(corpus.records) // rows][:rows]
    columns = {
        f"{f}_ids": tok([r[f] for r in records], truncation=True, max_length=32)["input_ids"]
        for f in ("anchor", "positive")
    }
    collate = Collator(
        ("anchor", "positive"), None, tok.pad_token_id, set(tok.all_special_ids), False, seed=0
    )
    return collate(columns, 0)


def test_finite_loss_and_gradients_reach_the_encoder_and_head():
    encoder = SentenceEncoder(tiny(), pooler="cls")
    objective = CCP(bank_size=16)
    objective.bind(encoder)
    encoder.train()
    batch = _sample_batch(encoder)
    objective(encoder, batch)  # first step: sets the BN statistics, banks nothing
    objective.after_optimizer_step(encoder, batch)
    out = objective(encoder, batch)
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    assert encoder.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert objective.head.first.weight.grad.abs().sum() > 0
    assert objective.head.norm.weight.grad.abs().sum() > 0


def test_state_round_trips_into_a_fresh_objective():
    objective = _bound(bank_size=6)
    for step in range(3):
        views, batch = _fake_step(step)
        objective.loss(views, batch)
        objective.after_optimizer_step(None, batch)
    state = objective.state_dict()
    assert {
        "bank.keys",
        "bank.ids",
        "bank.filled",
        "head.norm.running_mean",
        "head.norm.updates",
    } <= set(state)
    fresh = _bound(bank_size=6)  # bind before load, as train.py does
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_sigterm_then_resume_is_bitwise_identical(tmp_path, monkeypatch, mlflow_store):
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    from csetrain.app.train import train
    from csetrain.loop import Interrupted

    from .helpers import sigterm_at_step
    from .test_resume import _cfg

    mlflow_store(tmp_path / "mlflow.db")  # the store _cfg names, empty
    extra = ["objective=ccp", "data=sample_neighbours", "objective.bank_size=20"]
    straight = train(_cfg(tmp_path, "straight", extra))
    restore = sigterm_at_step(monkeypatch, 3)
    with pytest.raises(Interrupted, match="after step 3"):
        train(_cfg(tmp_path, "resumed", extra))
    restore()
    resumed = train(_cfg(tmp_path, "resumed", [*extra, "trainer.resume=auto"]))

    def weights(summary):
        return load_file(os.path.join(summary.run_dir, "checkpoints", "best", "model.safetensors"))

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    def history(summary, key):
        return [
            m.value
            for m in sorted(client.get_metric_history(summary.run_id, key), key=lambda m: m.step)
        ]

    # the bank (full from step 3 at 16 keys a step) shapes every later loss: equal losses after
    # the kill mean it was restored exactly
    assert history(resumed, "train/loss") == history(straight, "train/loss")
    assert history(resumed, "train/bank_filled") == [0.0, 0.0, 16.0, 20.0, 20.0, 20.0]


# --- configuration and end to end ----------------------------------------------------------


def test_yaml_picks_the_neighbour_data_and_the_command_line_wins():
    cfg = _compose(["objective=ccp"])
    assert cfg.data.name == "wiki_neighbours" and cfg.objective._target_.endswith("CCP")
    assert _compose(["objective=ccp", "data=sample_neighbours"]).data.name == "sample_neighbours"


def test_experiment_is_marked_and_carries_its_settings():
    cfg = _compose(["experiment=ccp_bert_base"])
    assert cfg.objective._target_.endswith("CCP") and cfg.data.name == "wiki_neighbours"
    assert (cfg.model.pooler, cfg.model.mlp_head) == ("cls", "none")
    assert (cfg.data.window, cfg.objective.bank_size, cfg.objective.temperature) == (2, 4096, 0.05)
    from csetrain.app.settings import config_dir

    header = (config_dir() / "experiment" / "ccp_bert_base.yaml").read_text().splitlines()[1]
    assert header.startswith("# experimental")


def test_three_steps_end_to_end(tmp_path):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(
        tmp_path, ["objective=ccp", "data=sample_neighbours", "trainer.max_steps=3"]
    )
    assert isinstance(c.objective, CCP)
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert int(c.objective.bank.filled) == 2 * 2 * 8  # steps 2 and 3, anchors + positives, batch 8
    assert int(c.objective.head.norm.updates) == 6  # two query passes a step


@pytest.mark.slow  # a fresh interpreter and 36,618 pairs to tokenize
def test_cli_three_steps_on_the_data_pack(tmp_path, data_dir):
    result = csetrain_cli(
        "train",
        "objective=ccp",
        "model=tiny",
        "trainer.max_steps=3",
        "trainer.batch_size=8",
        "trainer.eval_every=0",
        "trainer.progress=false",
        "eval=stsb_test",
        "tracking=none",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={tmp_path}",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["train/seconds"] > 0 and math.isfinite(metrics["test/senteval/stsb/spearman"])
    (config,) = tmp_path.glob("runs/*/*/config.yaml")  # objective=ccp brought its own data
    assert "name: wiki_neighbours" in config.read_text()
