"""data=mix: the sampling rules' probabilities, batches as a pure function of (seed, step) with
one source per batch, the in-batch-off loss against a hand computation, per-source metrics and
tags of a real run, a one-source mix equal to its plain option, and bitwise resume of a mix."""

import dataclasses
import math
import os

import datasets
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from safetensors.torch import load_file

from csetrain.app.settings import validate_settings
from csetrain.app.train import build, train
from csetrain.config import ConfigError
from csetrain.data.collate import Batch, StepSampler
from csetrain.data.mix import BLOCK, CHOICE_STREAM, MixSampler, probabilities
from csetrain.data.mix_sources import MixedRows, MixSource, merge_prompts
from csetrain.data.sources import Corpus
from csetrain.loop import Interrupted, fit
from csetrain.losses import own_candidates_nce
from csetrain.negatives.hard_from_data import HardFromData
from csetrain.objectives.simcse_sup import SimCSESup
from csetrain.runtime import seed_everything
from csetrain.seeding import draw_seed

from .helpers import shared_cache, sigterm_at_step, small_sts
from .test_config import _compose
from .test_train import RecordingTracker

SOURCES = "data.sources=[{option: sample}, {option: sample_nli}]"


# --- sampling rules -------------------------------------------------------------------------
def test_probabilities_of_each_rule():
    sizes = [100, 300, 600]
    assert probabilities(sizes, "proportional") == pytest.approx([0.1, 0.3, 0.6], abs=1e-15)
    assert probabilities(sizes, "uniform") == pytest.approx([1 / 3] * 3, abs=1e-15)
    roots = [10.0, math.sqrt(300), math.sqrt(600)]  # temperature 2: p ~ n^(1/2)
    expected = [r / sum(roots) for r in roots]
    assert probabilities(sizes, "temperature", 2.0) == pytest.approx(expected, abs=1e-15)
    assert probabilities(sizes, "temperature", 1.0) == pytest.approx([0.1, 0.3, 0.6], abs=1e-15)
    weights = probabilities(sizes, "weights", weights=[1, 1, 2])
    assert weights == pytest.approx([0.25, 0.25, 0.5], abs=1e-15)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("temperature", 0.0), "data.temperature"),
        (("zipf",), "data.sampling='zipf'"),
        (("weights", 1.0, [1, None, 1]), "weight"),
        (("weights", 1.0, [0, 0, 0]), "sum to 0"),
    ],
)
def test_bad_sampling_is_one_line(args, match):
    with pytest.raises(ConfigError, match=match):
        probabilities([1, 2, 3], *args)


def test_source_draws_are_the_seeded_uniforms_cut_at_the_probabilities():
    sampler = MixSampler(["a", "b", "c"], [50, 50, 50], [0.2, 0.5, 0.3], 4, seed=7)
    gen = torch.Generator().manual_seed(draw_seed(7, 0, CHOICE_STREAM))
    u = torch.rand(BLOCK, generator=gen, dtype=torch.float64)
    expected = (u >= 0.2).long() + (u >= 0.7).long()  # by hand: [0, .2) a, [.2, .7) b, rest c
    assert [sampler.source_of(k) for k in range(BLOCK)] == expected.tolist()
    counts = torch.bincount(expected, minlength=3).double() / BLOCK
    sd = math.sqrt(0.25 / BLOCK)  # binomial standard deviation, at most
    assert counts.tolist() == pytest.approx([0.2, 0.5, 0.3], abs=5 * sd)


# --- batches are a pure function of (seed, step) ---------------------------------------------
def test_batches_are_pure_of_seed_and_step_one_source_each():
    sizes, batch = [40, 24, 16], 8
    sampler = MixSampler(["a", "b", "c"], sizes, [0.5, 0.3, 0.2], batch, seed=3)
    steps = range(2 * BLOCK // 64 + 30)
    batches = [sampler.indices(k) for k in steps]
    later = MixSampler(["a", "b", "c"], sizes, [0.5, 0.3, 0.2], batch, seed=3)
    for k in (100, 7, 0, 99):  # a rebuilt sampler, asked out of order (a resume)
        assert later.indices(k) == batches[k]
    offsets = [0, 40, 64]
    streams = {s: [] for s in range(3)}
    for k, rows in zip(steps, batches):
        source = sampler.source_of(k)
        assert all(offsets[source] <= i < offsets[source] + sizes[source] for i in rows)
        streams[source].append([i - offsets[source] for i in rows])
    for s, seen in streams.items():  # each source walks its own seeded epochs in order
        own = StepSampler(sizes[s], batch, 3 + 1000 * s)
        assert seen == [own.indices(j) for j in range(len(seen))]
    rows = sampler.rows_seen(len(steps))
    assert rows == {n: batch * len(streams[s]) for s, n in enumerate("abc")}
    assert (
        MixSampler(["a", "b", "c"], sizes, [0.5, 0.3, 0.2], batch, seed=4).indices(0) != batches[0]
    )


def test_mixed_batches_draw_every_row_on_its_own():
    sampler = MixSampler(["a", "b"], [30, 30], [0.5, 0.5], 16, seed=1, one_source=False)
    first = sampler.indices(0)
    assert sampler.source_of(0) is None
    assert any(i < 30 for i in first) and any(i >= 30 for i in first)  # P(all one) = 2^-15
    assert MixSampler(["a", "b"], [30, 30], [0.5, 0.5], 16, 1, one_source=False).indices(0) == first
    assert sum(sampler.rows_seen(1).values()) == 16


def test_mixed_rows_keep_the_samplers_order_across_sources():
    a = datasets.Dataset.from_dict({"anchor": ["a0", "a1", "a2"], "anchor_ids": [[1], [2], [3]]})
    b = datasets.Dataset.from_dict({"anchor": ["b0", "b1"], "positive": ["p0", "p1"]})
    rows = MixedRows([a, b])
    assert len(rows) == 5 and rows.column_names == ["anchor"]
    assert rows.select_columns(["anchor"])[[4, 0, 3, 2]] == {"anchor": ["b1", "a0", "b0", "a2"]}
    assert rows.select_columns(["positive"])[[4, 3]] == {"positive": ["p1", "p0"]}  # one source
    assert rows["anchor"] == ["a0", "a1", "a2", "b0", "b1"]


def test_a_source_smaller_than_the_batch_is_refused():
    with pytest.raises(ConfigError, match="'b' has 4 rows.*trainer.batch_size=8"):
        MixSampler(["a", "b"], [40, 4], [0.5, 0.5], 8, seed=0)


# --- in-batch negatives off -------------------------------------------------------------------
def test_own_candidates_loss_matches_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    a, p = (
        torch.randn(4, 6, generator=gen, dtype=torch.float64),
        torch.randn(4, 6, generator=gen, dtype=torch.float64),
    )
    h = torch.randn(4, 2, 6, generator=gen, dtype=torch.float64)
    loss, logits = own_candidates_nce(a, p, h, temperature=0.1, negative_offset=0.5)
    total = 0.0
    for i in range(4):
        cos = [F.cosine_similarity(a[i], c, dim=0).item() for c in (p[i], h[i, 0], h[i, 1])]
        scores = [cos[0] / 0.1, cos[1] / 0.1 + 0.5, cos[2] / 0.1 + 0.5]
        total += -scores[0] + math.log(sum(math.exp(s) for s in scores))
    assert loss.item() == pytest.approx(total / 4, rel=1e-12)  # float64 throughout
    assert logits.shape == (4, 3)


def test_simcse_sup_with_in_batch_off_sees_no_other_row():
    gen = torch.Generator().manual_seed(1)
    views = {
        f: torch.randn(3, 5, generator=gen, dtype=torch.float64)
        for f in ("anchor", "positive", "hard_negative")
    }
    objective = SimCSESup(HardFromData(), temperature=0.05)
    batch = Batch(torch.zeros(9, 2), torch.ones(9, 2), ("anchor", "positive", "hard_negative"), 3)
    own = objective.loss(views, dataclasses.replace(batch, in_batch_negatives=False)).loss
    expected, _ = own_candidates_nce(
        views["anchor"], views["positive"], views["hard_negative"][:, None], 0.05
    )
    assert own.item() == pytest.approx(expected.item(), rel=1e-12)
    every = objective.loss(views, batch).loss  # in-batch: the other rows count too
    assert every.item() > own.item()
    with pytest.raises(ConfigError, match="in_batch_negatives=false"):
        objective.loss(
            {k: v for k, v in views.items() if k != "hard_negative"},
            dataclasses.replace(batch, in_batch_negatives=False),
        )


def test_in_batch_off_with_k_hard_negatives_takes_each_rows_own_k():
    gen = torch.Generator().manual_seed(2)
    fields = ("anchor", "positive", "hard_negative_1", "hard_negative_2")
    views = {f: torch.randn(4, 5, generator=gen, dtype=torch.float64) for f in fields}
    objective = SimCSESup(HardFromData(), temperature=0.05, hard_negative_weight=0.3)
    batch = Batch(torch.zeros(16, 2), torch.ones(16, 2), fields, 4, in_batch_negatives=False)
    own = torch.stack([views["hard_negative_1"], views["hard_negative_2"]], dim=1)  # (B, 2, D)
    expected, _ = own_candidates_nce(views["anchor"], views["positive"], own, 0.05, 0.3)
    assert objective.loss(views, batch).loss.item() == pytest.approx(expected.item(), rel=1e-12)


# --- prompts ---------------------------------------------------------------------------------
def _source(name, prompts):
    return MixSource(name, Corpus(name, [], ("anchor",), {}, prompts=prompts), rows=[])


def test_prompts_merge_and_disagreements_stay_per_source():
    same = merge_prompts([_source("a", {"query": "Q: "}), _source("b", {"query": "Q: "})])
    assert same == {"query": "Q: "}
    differ = merge_prompts(
        [_source("a", {"query": "A: "}), _source("b", {"query": "B: "}), _source("c", {})]
    )
    assert differ == {"query_a": "A: ", "query_b": "B: "}


# --- runs ------------------------------------------------------------------------------------
def _cfg(tmp_path, name, extra=()):
    return _compose(
        [
            "experiment=demo",
            "model=tiny",
            "data=mix",
            "trainer.max_steps=6",
            "trainer.batch_size=8",
            "trainer.eval_every=0",
            "trainer.log_every=1",
            "trainer.progress=false",
            "tracking.log_model=false",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"paths.output_dir={tmp_path}/{name}",
            f"paths.data_dir={small_sts()}",  # evaluation data: STS-B cut to 200 pairs
            f"paths.cache_dir={shared_cache()}",  # sample tokens, start scores: once
            *extra,
        ]
    )


def _fit(tmp_path, extra=()):
    cfg = _cfg(tmp_path, "fit", extra)
    settings = validate_settings(cfg)
    seed_everything(settings.trainer.seed)
    tracker = RecordingTracker()
    components, tags = build(cfg, settings, tmp_path / "run", tracker)
    fit(components, settings.trainer)
    return tracker, components, tags


def test_mixed_run_logs_each_source_and_records_the_mix(tmp_path):
    nli_task = "Given a premise, retrieve a hypothesis that is entailed by the premise"
    nli = f"{{option: sample_nli, instruction: '{nli_task}', in_batch_negatives: false}}"
    sources = f"data.sources=[{{option: sample}}, {nli}]"
    tracker, c, tags = _fit(tmp_path, ["objective=simcse_sup", sources, "trainer.max_steps=8"])
    assert tags["data.mix.sources"] == "sample,sample_nli"
    assert float(tags["data.mix.p.sample"]) == pytest.approx(4000 / 4600, abs=1e-6)
    assert tags["data.sentences"] == "4600"
    assert tags["data.mix.in_batch_negatives.sample_nli"] == "false"
    rows = 0
    for step, metrics in tracker.metrics:
        source = c.sampler.names[c.sampler.source_of(step - 1)]
        assert metrics[f"train/loss/{source}"] == metrics["train/loss"]  # log_every=1: one step
        assert [k for k in metrics if k.startswith("train/loss/")] == [f"train/loss/{source}"]
        rows += 8
        own_only = source == "sample_nli"  # in-batch off: its one own hard negative, no other row
        assert (metrics["train/effective_negatives"] == 1.0) == own_only
        assert metrics["train/rows/sample"] + metrics["train/rows/sample_nli"] == rows
    assert {c.sampler.source_of(k) for k in range(8)} == {0, 1}  # both sources trained
    assert c.dataset["anchor"][4000].startswith(f"Instruct: {nli_task}\nQuery: ")
    assert not c.dataset["anchor"][0].startswith("Instruct:")  # the wiki source's own (none)
    # triplets: only anchors carry the instruction, so documents get the empty prompt (prompts.py)
    nli_prompts = {"query": f"Instruct: {nli_task}\nQuery: ", "document": ""}
    assert c.collator.sources[1].corpus.prompts == nli_prompts


def test_mixed_batches_run_and_count_rows_per_source(tmp_path):
    two = "data.sources=[{option: sample}, {option: sample, name: head, max_sentences: 100}]"
    extra = [
        two,
        "data.batch_from_one_source=false",
        "data.sampling=uniform",
        "trainer.max_steps=3",
    ]
    tracker, c, _ = _fit(tmp_path, extra)
    assert not [k for k, _ in tracker.metrics[-1][1].items() if k.startswith("train/loss/")]
    rows = tracker.metrics[-1][1]
    assert rows["train/rows/sample"] + rows["train/rows/head"] == 24
    assert 0 < rows["train/rows/head"] < 24  # uniform per row: both sources in the batches


def test_a_one_source_mix_trains_like_its_option(tmp_path):
    plain, _, _ = _fit(tmp_path / "plain", ["data=sample"])
    mixed, _, _ = _fit(tmp_path / "mix", ["data.sources=[{option: sample}]"])
    assert mixed.series("train/loss") == plain.series("train/loss")  # bitwise
    assert mixed.series("train/loss/sample") == plain.series("train/loss")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (
            ["data.sources=[{option: sample, in_batch_negatives: false}]"],
            "leaves its anchors no negatives",
        ),
        (["data.sources=[{option: nope}]"], "data.sources\\[0\\].option='nope'"),
        (["data.sources=[{option: sample}, {option: sample}]"], "its own `name`"),
        (["objective=mcl", SOURCES], "composes its own batches"),
        ([SOURCES, "+data.sources.0.weight=2"], "only with data.sampling=weights"),
        ([SOURCES, "+data.instruction=x"], "give each source its own"),
        (
            [SOURCES, "objective=simcse_sup", "data.batch_from_one_source=false"],
            "needs sources with the same fields",
        ),
    ],
)
def test_bad_mixes_fail_at_build_with_one_line(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        _fit(tmp_path, extra)


def _weights(summary):
    return load_file(os.path.join(summary.run_dir, "checkpoints", "best", "model.safetensors"))


def test_sigterm_then_resume_of_a_mix_is_bitwise_identical(tmp_path, mlflow_store, monkeypatch):
    mlflow_store(tmp_path / "mlflow.db")
    extra = ["objective=simcse_sup", SOURCES, "data.sampling=uniform", "trainer.save_every=1"]
    straight = train(_cfg(tmp_path, "straight", extra))
    restore = sigterm_at_step(monkeypatch, 3)  # a real SIGTERM, delivered mid-run
    with pytest.raises(Interrupted, match="after step 3"):
        train(_cfg(tmp_path, "resumed", extra))
    restore()
    resumed = train(_cfg(tmp_path, "resumed", [*extra, "trainer.resume=auto"]))
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    def history(run_id):
        data = client.get_run(run_id).data.metrics
        keys = [k for k in data if k.startswith(("train/loss/", "train/rows/"))]
        return {
            k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in keys
        }

    assert history(resumed.run_id) == history(straight.run_id)
