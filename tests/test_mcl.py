"""MCL: k-means recovers separated blobs, pseudo labels combine stages, every later-stage batch
comes from one stage-(k-1) cluster, the inference embedding is the stages' concatenation (also
after export), a resume mid-stage restores the clusters, and 3 training steps run end to end."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from csetrain.config import ConfigError
from csetrain.data.cache import tokenized_dataset
from csetrain.data.sources import TextLines
from csetrain.modeling.export import load_sentence_encoder, save_sentence_transformer
from csetrain.objectives.mcl import MCL
from csetrain.objectives.mcl_clusters import (
    _kmeans_plus_plus,
    combine_labels,
    draw_group_batch,
    kmeans,
    stage_boundaries,
)

from .helpers import csetrain_in_process, shared_cache, small_sts
from .test_objectives import _unsup_batch

TOPICS = ["the cat sat on mat {}", "stock prices rose {} percent", "rain fell for {} hours"]
CORPUS = [t.format(i) for t in TOPICS for i in range(12)]  # 36 sentences


def _blobs(seed=0, per_blob=20):
    """Three tight blobs far apart: (60, 2) points and their true blob of origin."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.3 * torch.randn(per_blob, 2, generator=gen) for c in centres])
    return points, torch.arange(3).repeat_interleave(per_blob)


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two labelings define the same groups (up to renaming)."""
    return torch.equal(a[:, None] == a[None], b[:, None] == b[None])


def test_kmeans_recovers_separated_blobs_exactly():
    points, truth = _blobs()
    centroids, labels = kmeans(points, 3, seed=0)
    assert _same_partition(labels, truth)
    for blob in range(3):  # each centroid is its blob's mean
        members = points[truth == blob]
        assert torch.allclose(centroids[labels[truth == blob][0]], members.mean(0), atol=1e-5)
    again = kmeans(points, 3, seed=0)
    assert torch.equal(again[1], labels) and torch.equal(again[0], centroids)  # seeded


def test_kmeans_hand_checked_line():
    # 0, 1 | 10, 11, 12: the only stable 2-split; centroids 0.5 and 11
    points = torch.tensor([[0.0], [1.0], [10.0], [11.0], [12.0]])
    for seed in range(5):
        centroids, labels = kmeans(points, 2, seed=seed)
        assert _same_partition(labels, torch.tensor([0, 0, 1, 1, 1]))
        assert sorted(centroids.squeeze(1).tolist()) == pytest.approx([0.5, 11.0])
    with pytest.raises(ConfigError, match="objective.num_clusters=6"):
        kmeans(points, 6)


def test_kmeans_equals_scikit_learn_lloyd_from_the_same_seeding():
    # Overlapping points on the unit sphere (like embeddings), where the clusters are not
    # obvious and any difference in the update or the stopping rule would change the labels.
    from sklearn.cluster import KMeans

    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        points = F.normalize(torch.randn(2000, 32, generator=gen), dim=-1)
        centroids, labels = kmeans(points, 10, max_iter=100, tol=1e-5, seed=seed)
        init = _kmeans_plus_plus(points, 10, torch.Generator().manual_seed(seed))
        reference = KMeans(
            10, init=init.numpy(), n_init=1, max_iter=100, tol=1e-5, algorithm="lloyd"
        ).fit(points.numpy())
        assert torch.equal(labels, torch.from_numpy(reference.labels_).long())
        # float32 means of ~200 unit-scale rows, summed in different orders
        atol = math.log2(len(points)) * torch.finfo(torch.float32).eps
        assert torch.allclose(centroids, torch.from_numpy(reference.cluster_centers_), atol=atol)


def test_pseudo_labels_separate_any_stage_difference():
    previous = torch.tensor([0, 0, 1, 1, 1])
    assert combine_labels(previous, torch.tensor([0, 1, 0, 1, 1])).tolist() == [0, 1, 2, 3, 3]
    # a stage that agrees with the earlier split adds nothing
    assert combine_labels(previous, torch.tensor([4, 4, 2, 2, 2])).tolist() == [0, 0, 1, 1, 1]
    assert combine_labels(None, torch.tensor([5, 2, 5])).tolist() == [1, 0, 1]


def test_group_batches_come_from_one_big_enough_group():
    labels = torch.tensor([0] * 8 + [1] * 16 + [2] * 3)  # group 2 holds no batch of 4
    seen = torch.zeros(3)
    for seed in range(300):
        picked = draw_group_batch(labels, 4, torch.Generator().manual_seed(seed))
        assert len(set(picked.tolist())) == 4  # no row twice
        group = labels[picked]
        assert (group == group[0]).all()
        seen[group[0]] += 1
    assert seen[2] == 0
    assert 0.2 < seen[0] / seen[1] < 0.8  # ∝ full batches: 2 vs 4 -> 0.5
    with pytest.raises(ConfigError, match="no cluster holds a batch of 20 rows"):
        draw_group_batch(labels, 20, torch.Generator())


def test_stage_boundaries_are_equal_shares():
    assert stage_boundaries(60, 2) == [30]
    assert stage_boundaries(10, 3) == [3, 6]
    assert stage_boundaries(5, 1) == []
    with pytest.raises(ConfigError, match="objective.stages=4"):
        stage_boundaries(3, 4)


def _bound(encoder, tmp_path, **kwargs):
    """An MCL objective bound as train.py binds it: to the encoder and the tokenized corpus."""
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    corpus = TextLines(files=["corpus.txt"], data_dir=str(tmp_path), name="t").load()
    dataset = tokenized_dataset(corpus, encoder.tokenizer, tmp_path / "cache")
    settings = {"stages": 2, "max_steps": 4, "num_clusters": 3, "seed": 0, **kwargs}
    objective = MCL(**settings)
    objective.bind(encoder, dataset)
    return objective


def _train_a_little(encoder):
    """Stands in for stage 1's optimizer steps: the weights move away from the initial ones."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _finish_stage_one(objective, encoder):
    batch = _unsup_batch(encoder)
    objective.after_optimizer_step(encoder, batch)
    _train_a_little(encoder)
    objective.after_optimizer_step(encoder, batch)  # step 2 = the end of stage 1 of 2 (4 steps)


def test_stage_two_batches_come_from_stage_one_clusters(tiny_encoder, tmp_path):
    objective = _bound(tiny_encoder, tmp_path)
    sampler_rows = [0, 1, 2, 3]
    assert objective.batch_indices(0, sampler_rows) == sampler_rows  # stage 1: the sampler's
    initial = {k: v.clone() for k, v in tiny_encoder.state_dict().items()}
    _finish_stage_one(objective, tiny_encoder)
    assert int(objective.completed_stages) == 1
    stage_one = objective.frozen_stages[0]
    assert not torch.equal(
        stage_one.transformer.embeddings.word_embeddings.weight,
        initial["transformer.embeddings.word_embeddings.weight"],
    )
    for key, value in tiny_encoder.state_dict().items():  # stage 2 restarts from the start
        assert torch.equal(value, initial[key])
    # The clusters are k-means of the frozen stage-1 model's embeddings of the corpus.
    rows = objective.cluster_rows.tolist()
    assert sorted(rows) == list(range(len(CORPUS)))
    points = objective.embed_rows(stage_one, rows)
    _, expected = kmeans(points, 3, seed=0)
    assert _same_partition(objective.cluster_labels, expected)
    cluster_of = dict(zip(rows, expected.tolist()))
    for step in range(2, 12):  # every stage-2 batch: anchors and negatives in one cluster
        batch_rows = objective.batch_indices(step, sampler_rows)
        assert len(batch_rows) == 4 and len(set(batch_rows)) == 4
        assert len({cluster_of[r] for r in batch_rows}) == 1


def test_inference_is_the_concatenation_of_the_stages(tiny_encoder, tmp_path):
    objective = _bound(tiny_encoder, tmp_path)
    texts = CORPUS[:5]
    assert tiny_encoder.encode(texts).shape == (5, 32)
    _finish_stage_one(objective, tiny_encoder)
    _train_a_little(tiny_encoder)  # stage 2 moves too
    assert tiny_encoder.output_dim == 64
    got = tiny_encoder.encode(texts)
    stage_one, stage_two = objective.frozen_stages[0].encode(texts), tiny_encoder.encode(texts)
    assert torch.allclose(got[:, :32], F.normalize(stage_one, dim=-1), atol=1e-6)
    tiny_encoder.prefix_encoders = []
    stage_two = tiny_encoder.encode(texts)
    objective._attach_stages()
    assert torch.allclose(got[:, 32:], F.normalize(stage_two, dim=-1), atol=1e-6)
    # cosine of concatenations = mean of the stages' cosines
    cos = F.normalize(got, dim=-1) @ F.normalize(got, dim=-1).T
    mean = (
        F.normalize(stage_one, dim=-1) @ F.normalize(stage_one, dim=-1).T
        + F.normalize(stage_two, dim=-1) @ F.normalize(stage_two, dim=-1).T
    ) / 2
    assert torch.allclose(cos, mean, atol=1e-5)
    # The saved folder reloads to the same concatenated embedding; the stock
    # sentence-transformers loader sees the last stage only.
    folder = save_sentence_transformer(tiny_encoder, tmp_path / "saved")
    assert json.loads((folder / "csetrain.json").read_text())["prefix_encoders"] == ["prefix_0"]
    reloaded = load_sentence_encoder(folder)
    assert torch.allclose(reloaded.encode(texts), got, atol=1e-5)
    st = pytest.importorskip("sentence_transformers")
    plain = st.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(plain, stage_two, atol=1e-4)


def test_gradients_reach_the_encoder_in_stage_two(tiny_encoder, tmp_path):
    objective = _bound(tiny_encoder, tmp_path)
    _finish_stage_one(objective, tiny_encoder)
    tiny_encoder.train()
    out = objective(tiny_encoder, _unsup_batch(tiny_encoder))
    assert math.isfinite(out.loss.item()) and out.metrics["stage"].item() == 2
    out.loss.backward()
    assert tiny_encoder.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    frozen = objective.frozen_stages[0].parameters()
    assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_state_round_trips_into_a_fresh_objective(tiny_encoder, tmp_path):
    import copy

    fresh_encoder = copy.deepcopy(tiny_encoder)  # a new run starts from the same weights
    objective = _bound(tiny_encoder, tmp_path)
    _finish_stage_one(objective, tiny_encoder)
    fresh = _bound(fresh_encoder, tmp_path)
    fresh.load_state_dict(objective.state_dict())
    assert int(fresh.completed_stages) == 1 and int(fresh.steps) == 2
    assert torch.equal(fresh.cluster_labels, objective.cluster_labels)
    assert torch.equal(fresh.cluster_rows, objective.cluster_rows)
    assert fresh.batch_indices(3, [0, 1, 2, 3]) == objective.batch_indices(3, [0, 1, 2, 3])
    assert torch.allclose(fresh_encoder.encode(CORPUS), tiny_encoder.encode(CORPUS))


def test_bad_settings_are_one_clear_line(tiny_encoder):
    with pytest.raises(ConfigError, match="objective.stage_init='later'"):
        MCL(stage_init="later")
    with pytest.raises(ConfigError, match="objective.num_clusters=1"):
        MCL(num_clusters=1)
    with pytest.raises(ConfigError, match="needs the tokenized training corpus"):
        MCL().bind(tiny_encoder, None)


def _components(tmp_path, max_steps=6):
    """Components of a tiny MCL run, built as train.py builds them (no fit yet)."""
    from csetrain.app.settings import validate_settings
    from csetrain.app.train import build
    from csetrain.runtime import seed_everything

    from .test_config import _compose
    from .test_train import RecordingTracker

    overrides = [
        "experiment=demo",
        "model=tiny",
        "objective=mcl",
        "objective.cluster_sample=256",
        f"trainer.max_steps={max_steps}",
        "trainer.batch_size=8",
        "trainer.log_every=1",
        "trainer.eval_every=0",
        "trainer.save_every=4",
        "trainer.progress=false",
        f"paths.output_dir={tmp_path}",
    ]
    settings = validate_settings(_compose(overrides))
    seed_everything(settings.trainer.seed)
    tracker = RecordingTracker()
    components, _ = build(_compose(overrides), settings, tmp_path / "run", tracker)
    return settings, components, tracker


def test_resume_mid_stage_two_restores_clusters_and_continues_bitwise(tmp_path):
    from csetrain.loop import fit

    settings, straight, tracker = _components(tmp_path / "a")
    fit(straight, settings.trainer)  # stage 2 = steps 4..6; full state saved after step 4
    assert tracker.series("train/stage") == [1, 1, 1, 2, 2, 2]
    _, resumed, resumed_tracker = _components(tmp_path / "b")
    start, progress = straight.checkpointer.load_state(
        resumed.encoder, resumed.objective, resumed.optimizer, resumed.scheduler
    )
    objective = resumed.objective
    assert start == 4 and int(objective.completed_stages) == 1
    assert torch.equal(objective.cluster_labels, straight.objective.cluster_labels)
    assert torch.equal(objective.cluster_rows, straight.objective.cluster_rows)
    assert resumed.encoder.output_dim == 64  # the frozen stage 1 is attached again
    fit(resumed, settings.trainer, start, progress)
    assert resumed_tracker.series("train/loss") == tracker.series("train/loss")[4:]
    for p, q in zip(resumed.encoder.parameters(), straight.encoder.parameters()):
        assert torch.equal(p, q)


def test_cli_three_steps_saves_and_reloads_the_concatenated_model(tmp_path):
    proc = csetrain_in_process(
        "train",
        "experiment=demo",
        "model=tiny",
        "objective=mcl",
        "objective.cluster_sample=256",
        "trainer.max_steps=3",  # stage 1 = step 1, stage 2 = steps 2-3
        "trainer.batch_size=8",
        "trainer.eval_every=0",  # no selection: the last (concatenated) model is the result
        "trainer.progress=false",
        "tracking=none",
        f"paths.output_dir={tmp_path}",
        f"paths.data_dir={small_sts()}",  # evaluation data: STS-B cut to 200 pairs
        f"paths.cache_dir={shared_cache()}",  # sample tokens, start scores: once
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert math.isfinite(metrics["test/senteval/stsb/spearman"])
    (info,) = Path(tmp_path).glob("runs/**/checkpoints/best/csetrain.json")
    best = load_sentence_encoder(info.parent)  # what `csetrain eval model=saved` loads
    assert best.output_dim == 64 and len(best.prefix_encoders) == 1
    stage_one = load_file(str(info.parent / "prefix_0" / "model.safetensors"))
    last = load_file(str(info.parent / "model.safetensors"))
    assert any(not torch.equal(stage_one[k], last[k]) for k in last)  # two different stages
