"""objective=distill: the two terms by hand, a student equal to its teacher scores zero, the
teacher stays frozen and out of the optimizer and the state dict, precomputed scores files, and
training end to end (tiny teacher; MiniLM teacher for one step)."""

import math

import pytest
import torch

from csetrain.app.components import build_objective
from csetrain.config import ConfigError
from csetrain.losses import cosine_matrix
from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.objectives.distill import Distill, masked_mse, row_kl

from .test_config import _compose
from .test_objectives import TEXTS, _unsup_batch
from .tolerances import EPS32, softmax_loss_atol

TINY_TEACHER = [
    "objective.teacher.backbone._target_=csetrain.modeling.backbones.tiny",
    "+objective.teacher.backbone.init_seed=1",  # a different random model than the student
    "objective.teacher.pooler=cls",
]


def _softmax(row):
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def test_mse_and_kl_by_hand():
    student = torch.tensor([[0.9, 0.2], [0.1, 0.8]])
    teacher = torch.tensor([[1.0, 0.5], [0.3, 1.0]])
    known = torch.ones(2, 2, dtype=torch.bool)
    assert masked_mse(student, teacher, known).item() == pytest.approx(
        (0.01 + 0.09 + 0.04 + 0.04) / 4
    )
    t_temp, s_temp = 0.5, 0.25
    expected = 0.0
    for t_row, s_row in zip(teacher.tolist(), student.tolist()):
        p = _softmax([x / t_temp for x in t_row])
        q = _softmax([x / s_temp for x in s_row])
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / 2
    kl = row_kl(teacher / t_temp, student / s_temp, known)
    # float32 against float64: softmax over 2 entries of logits up to 1 / 0.25
    assert kl.item() == pytest.approx(expected, abs=softmax_loss_atol(2, 1 / s_temp, sides=1))


def test_unknown_pairs_are_left_out():
    student = torch.tensor([[0.9, 0.2], [0.1, 0.8]])
    teacher = torch.tensor([[1.0, 123.0], [0.3, 1.0]])  # 123: must never be read
    known = torch.tensor([[True, False], [True, True]])
    assert masked_mse(student, teacher, known).item() == pytest.approx((0.01 + 0.04 + 0.04) / 3)
    # row 0 has a single known entry (KL 0); row 1 is a plain 2-way KL; mean over both rows
    p, q = _softmax([0.3, 1.0]), _softmax([0.1, 0.8])
    row1 = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    atol = softmax_loss_atol(2, 1.0, sides=1)  # float32, softmax over 2 entries, logits <= 1
    assert row_kl(teacher, student, known).item() == pytest.approx(row1 / 2, abs=atol)
    none = torch.zeros(2, 2, dtype=torch.bool)
    assert row_kl(teacher, student, none).item() == 0.0


def test_student_equal_to_teacher_scores_zero(tiny_encoder):
    objective = Distill(teacher=SentenceEncoder(tiny(), pooler="cls"))  # same init, same weights
    batch = _unsup_batch(tiny_encoder)
    tiny_encoder.eval()  # no dropout: the student's views are the teacher's embeddings
    out = objective(tiny_encoder, batch)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    tiny_encoder.train()  # dropout twins now differ from the teacher: a signal, with gradients
    out = objective(tiny_encoder, batch)
    assert out.loss.item() > 1e-4
    out.loss.backward()
    assert tiny_encoder.transformer.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def _distill_atol(mse_weight: float, kl_weight: float, max_abs_logit: float) -> float:
    """Both sides computed in float32 from float64 encoders (the teacher's embeddings, the
    cosines from encode() and the loss terms are float32 in the library): cosines of 32 dims
    within (32 + 4) * eps32 per side; the squared difference of cosines (|s - t| <= 2) moves by
    at most 4x that; the KL by softmax_loss_atol."""
    mse = 2 * 4 * (32 + 4) * EPS32
    return mse_weight * mse + kl_weight * softmax_loss_atol(32, max_abs_logit)


def test_loss_is_the_terms_on_student_and_teacher_embeddings(tiny_encoder):
    # float64 encoders: encode() pads to another width than the batch
    teacher = SentenceEncoder(tiny(init_seed=1), pooler="mean").double()
    objective = Distill(teacher=teacher, mse_weight=0.5, kl_weight=2.0, student_temperature=0.1)
    batch = _unsup_batch(tiny_encoder)
    tiny_encoder.double().eval()
    out = objective(tiny_encoder, batch)
    z = tiny_encoder.encode(TEXTS)
    s, t = cosine_matrix(z, z), cosine_matrix(teacher.encode(TEXTS), teacher.encode(TEXTS))
    known = torch.ones(4, 4, dtype=torch.bool)
    expected = 0.5 * masked_mse(s, t, known) + 2.0 * row_kl(t / 0.05, s / 0.1, known)
    atol = _distill_atol(0.5, 2.0, max_abs_logit=1 / 0.05)
    assert out.loss.item() == pytest.approx(expected.item(), abs=atol)


def test_teacher_is_frozen_and_outside_optimizer_and_state_dict(tmp_path):
    from .test_train import _run_tiny

    objective = build_objective(_compose(["objective=distill", *TINY_TEACHER]))
    teacher = objective.teacher.encoder
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert teacher_ids and not teacher_ids & {id(p) for p in objective.parameters()}
    assert not any(k.startswith("teacher") for k in objective.state_dict())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    _, c = _run_tiny(tmp_path, ["objective=distill", "trainer.max_steps=3", *TINY_TEACHER])
    teacher = c.objective.teacher.encoder
    optimized = {id(p) for group in c.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert all(p.grad is None for p in teacher.parameters())
    fresh = tiny(init_seed=1).model.state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in teacher.transformer.state_dict().items())


def test_teacher_with_another_vocabulary_is_refused(tiny_encoder):
    teacher = SentenceEncoder(tiny(), pooler="cls")
    teacher.tokenizer.add_tokens(["qqzzyx"])  # one extra id: the student's ids mean other things
    with pytest.raises(ConfigError, match="objective.teacher"):
        Distill(teacher=teacher)(tiny_encoder, _unsup_batch(tiny_encoder))


def test_exactly_one_teacher_source():
    with pytest.raises(ConfigError, match="objective.teacher / objective.scores_file"):
        Distill()


def test_scores_file_pairs_match_through_the_tokenizer(tiny_encoder, tmp_path):
    path = tmp_path / "scores.tsv"
    # TEXTS[0]/[1] written upper-cased with extra spaces: the uncased tokenizer maps them alike
    path.write_text(
        "A MAN  plays a guitar\tTwo dogs run in a field\t0.25\n" + f"{TEXTS[2]}\t{TEXTS[3]}\t-0.5\n"
    )
    objective = Distill(scores_file=str(path), max_length=32)
    batch = _unsup_batch(tiny_encoder)
    tiny_encoder.double().eval()  # as above
    out = objective(tiny_encoder, batch)
    teacher = torch.eye(4)
    teacher[0, 1] = teacher[1, 0] = 0.25
    teacher[2, 3] = teacher[3, 2] = -0.5
    known = teacher != 0
    z = tiny_encoder.encode(TEXTS)
    s = cosine_matrix(z, z)
    expected = masked_mse(s, teacher, known) + row_kl(teacher / 0.05, s / 0.05, known)
    assert out.metrics["known"].item() == pytest.approx(8 / 16)
    atol = _distill_atol(1.0, 1.0, max_abs_logit=1 / 0.05)
    assert out.loss.item() == pytest.approx(expected.item(), abs=atol)


def test_bad_scores_file_names_the_line(tmp_path):
    path = tmp_path / "scores.tsv"
    path.write_text("a\tb\t0.5\nc\td\tnot-a-number\n")
    with pytest.raises(ConfigError, match=r"scores.tsv:2: expected"):
        Distill(scores_file=str(path))


def test_three_training_steps_with_a_tiny_teacher(tmp_path):
    from .test_train import _run_tiny

    tracker, _ = _run_tiny(tmp_path, ["objective=distill", "trainer.max_steps=3", *TINY_TEACHER])
    losses = tracker.series("train/loss")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert len(tracker.series("train/kl")) == 3


def test_minilm_can_be_the_teacher(tmp_path):
    from .test_train import _run_tiny

    tracker, c = _run_tiny(tmp_path, ["objective=distill", "trainer.max_steps=1"])
    assert c.objective.teacher.encoder.transformer.config.hidden_size == 384
    assert math.isfinite(tracker.series("train/loss")[0])
