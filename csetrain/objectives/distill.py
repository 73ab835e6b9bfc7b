"""`objective=distill`: learn a frozen teacher's pair scores (DSE, Barkan et al., arXiv 1910.03747,
generalised from one score per pair to the whole in-batch similarity matrix)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from csetrain.config import ConfigError
from csetrain.data.collate import Batch
from csetrain.losses import cosine_matrix, info_nce, top1_accuracy
from csetrain.modeling.frozen import FrozenEncoder, field_rows
from csetrain.negatives.base import NegativeMiner
from csetrain.objectives.base import Objective, ObjectiveOutput, checked_temperature


def masked_mse(student: Tensor, teacher: Tensor, known: Tensor) -> Tensor:
    """Mean squared difference over the known entries. student, teacher (B, C); known (B, C)
    bool -> scalar."""
    diff = (student.float() - teacher.float()).pow(2)
    return diff[known].mean() if known.any() else diff.sum() * 0.0


def row_kl(teacher_logits: Tensor, student_logits: Tensor, known: Tensor) -> Tensor:
    """Mean over rows of KL(softmax(teacher row) || softmax(student row)), each softmax taken over
    the row's known entries only; rows without a known entry are left out. (B, C) -> scalar."""
    hidden = torch.finfo(torch.float32).min
    log_t = teacher_logits.float().masked_fill(~known, hidden).log_softmax(-1)  # (B, C)
    log_s = student_logits.float().masked_fill(~known, hidden).log_softmax(-1)  # (B, C)
    terms = (log_t.exp() * (log_t - log_s)).masked_fill(~known, 0.0)  # (B, C)
    rows = known.any(-1)
    return terms.sum(-1)[rows].mean() if rows.any() else terms.sum() * 0.0


class PairScores:
    """Precomputed teacher scores, a UTF-8 TSV with one pair per line and no header:

        sentence_a<TAB>sentence_b<TAB>score

    `score` is the teacher's cosine similarity (a float; the KL term divides it by
    `teacher_temperature`, so a cosine-like scale is expected). Pairs are symmetric (a, b) = (b, a);
    a sentence paired with itself scores 1.0 unless the file says otherwise. Sentences are keyed by
    their text, matched through the trained model's tokenizer with the training truncation
    (`max_length`): a batch row matches a file sentence when both tokenize to the same ids, so
    lower-casing, whitespace and truncation past `max_length` cannot cause a miss.
    """

    def __init__(self, path: str | Path, max_length: int) -> None:
        self.path, self.max_length = Path(path), max_length
        if not self.path.is_file():
            raise ConfigError(f"objective.scores_file not found: {self.path} (give a TSV path)")
        self.rows = self._read()
        self.table: dict[tuple, float] | None = None
        self.tokenizer = None

    def _read(self) -> list[tuple[str, str, float]]:
        rows = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            score = _float(parts[2]) if len(parts) == 3 else None
            if score is None or not math.isfinite(score):
                raise ConfigError(
                    f"{self.path}:{number}: expected 'sentence<TAB>sentence<TAB>score' with a "
                    "finite score (objective.scores_file)"
                )
            rows.append((parts[0], parts[1], score))
        return rows

    def index(self, tokenizer) -> None:
        """Key every sentence by its token ids under the trained model's tokenizer (once)."""
        if tokenizer is self.tokenizer:
            return
        texts = list(dict.fromkeys(t for a, b, _ in self.rows for t in (a, b)))
        ids = tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        key = {text: tuple(row) for text, row in zip(texts, ids)}
        self.table = {}
        for a, b, score in self.rows:
            self.table[(key[a], key[b])] = score
            self.table.setdefault((key[b], key[a]), score)
        self.tokenizer = tokenizer

    def matrix(self, rows: list[tuple], columns: list[tuple]) -> tuple[Tensor, Tensor]:
        """Scores (R, C) and which are known (R, C) for token-id keys of rows and columns."""
        if self.table is None:
            raise ConfigError(
                "objective.scores_file is matched through the model's tokenizer, which the "
                "objective sees in its own forward pass: trainer.grad_cache is not supported with it"
            )
        scores = torch.zeros(len(rows), len(columns))
        known = torch.zeros(len(rows), len(columns), dtype=torch.bool)
        for i, a in enumerate(rows):
            for j, b in enumerate(columns):
                value = self.table.get((a, b), 1.0 if a == b else None)
                if value is not None:
                    scores[i, j], known[i, j] = value, True
        return scores, known


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _keys(ids: Tensor, mask: Tensor) -> list[tuple]:
    return [tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask)]


class Distill(Objective):
    """The student's in-batch similarity matrix learns the teacher's.

    Which pairs: on unlabeled sentences a teacher scores a sentence with itself ~1, so one score
    per (anchor, positive) pair teaches nothing. We use every in-batch pair instead: the student's
    matrix S[i, j] = cos(anchor_i, positive_j) (the `positive` view is the anchor's dropout twin
    with `augmentation=dropout`, or the corpus's positive with data that has one) against the
    teacher's T[i, j] = cos(teacher(anchor_i), teacher(positive_j)) (teacher in eval mode, so
    with dropout twins T's diagonal is 1 and its off-diagonal ranks the other sentences).

        loss = mse_weight * mean_ij (S - T)^2
             + kl_weight * mean_i KL(softmax(T_i / teacher_temperature) || softmax(S_i / student_temperature))
             + contrastive_weight * InfoNCE(S / student_temperature)   [optional task loss]

    The MSE term is DSE's (there: one cross-encoder logit per labelled pair, α = 0.5 mixing with
    the task loss, which `contrastive_weight` plays here on unlabeled data); the row-wise KL term is
    the listwise form used by later distillation work. Batch fields: `anchor` (+ `positive` from
    the augmentation). Miner: any; its extra negatives enter only the contrastive term.

    Teacher: `teacher` is any model option built by Hydra (frozen, outside `parameters()` and
    `state_dict()`: see csetrain/modeling/frozen.py); it must share the student's tokenizer because
    it reads the batch's token ids (a different vocabulary raises a ConfigError; we do not decode
    and re-tokenize). Or `scores_file`: precomputed scores (format in `PairScores`); pairs absent
    from the file are left out of both terms.
    """

    data_fields = ("anchor",)
    augmented_positive = True

    def __init__(
        self,
        miner: NegativeMiner | None = None,
        teacher: nn.Module | None = None,
        scores_file: str | None = None,
        max_length: int = 32,
        mse_weight: float = 1.0,
        kl_weight: float = 1.0,
        teacher_temperature: float = 0.05,
        student_temperature: float = 0.05,
        contrastive_weight: float = 0.0,
    ) -> None:
        super().__init__(miner)
        if (teacher is None) == (scores_file is None):
            raise ConfigError(
                "objective.teacher / objective.scores_file: set exactly one "
                "(objective.teacher=null objective.scores_file=PATH for precomputed scores)"
            )
        for key, value in (("teacher", teacher_temperature), ("student", student_temperature)):
            checked_temperature(value, f"objective.{key}_temperature")
        self.teacher = FrozenEncoder(teacher, "objective.teacher") if teacher is not None else None
        self.scores = PairScores(scores_file, max_length) if scores_file is not None else None
        self.mse_weight, self.kl_weight = mse_weight, kl_weight
        self.teacher_temperature, self.student_temperature = (
            teacher_temperature,
            student_temperature,
        )
        self.contrastive_weight = contrastive_weight

    def _meet_student(self, tokenizer) -> None:
        if self.teacher is not None:
            self.teacher.check_tokenizer(tokenizer)
        else:
            self.scores.index(tokenizer)

    def embed(self, encoder: nn.Module, batch: Batch) -> dict[str, Tensor]:
        self._meet_student(encoder.tokenizer)  # before the first loss, on the normal path
        return super().embed(encoder, batch)

    def teacher_matrix(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """T (B, B) = teacher cos(anchor_i, positive_j), and which entries are known (B, B)."""
        anchor_ids, anchor_mask = field_rows(batch, "anchor")
        positive_ids, positive_mask = field_rows(batch, "positive")
        if self.scores is not None:
            scores, known = self.scores.matrix(
                _keys(anchor_ids, anchor_mask), _keys(positive_ids, positive_mask)
            )
            return scores.to(batch.input_ids.device), known.to(batch.input_ids.device)
        anchors = self.teacher.embed(anchor_ids, anchor_mask)
        same_tokens = anchor_ids.shape == positive_ids.shape and torch.equal(
            anchor_ids, positive_ids
        )
        positives = anchors if same_tokens else self.teacher.embed(positive_ids, positive_mask)
        scores = cosine_matrix(anchors, positives)  # (B, B)
        return scores, torch.ones_like(scores, dtype=torch.bool)

    def loss(self, views: dict[str, Tensor], batch: Batch) -> ObjectiveOutput:
        anchors, positives = views["anchor"], views["positive"]  # (B, D) each
        student = cosine_matrix(anchors, positives)  # (B, B)
        teacher, known = self.teacher_matrix(batch)  # (B, B) each, no graph
        mse = masked_mse(student, teacher, known)
        kl = row_kl(teacher / self.teacher_temperature, student / self.student_temperature, known)
        loss = self.mse_weight * mse + self.kl_weight * kl
        targets = torch.arange(len(anchors), device=anchors.device)
        metrics = {
            "mse": mse.detach(),
            "kl": kl.detach(),
            "acc": top1_accuracy(student.detach(), targets),
            "known": known.float().mean(),
        }
        if self.contrastive_weight:
            extra = self.miner.extra_negatives(anchors, views)
            candidates = positives if extra is None else torch.cat([positives, extra.embeddings])
            task, _ = info_nce(anchors, candidates, targets, self.student_temperature)
            loss = loss + self.contrastive_weight * task
            metrics["contrastive"] = task.detach()
        return ObjectiveOutput(loss, metrics)
