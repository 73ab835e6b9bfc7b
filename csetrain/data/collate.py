"""Batches: which rows make step k (resumable by construction) and how rows become one padded
tensor holding every view, so the encoder runs one forward pass per step."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch
from torch import Tensor

from csetrain.config import ConfigError
from csetrain.seeding import draw_generator, draw_seed


@dataclass
class Batch:
    """All views of B examples stacked field-major: rows [f*B, (f+1)*B) hold field f."""

    input_ids: Tensor  # (F*B, L)
    attention_mask: Tensor  # (F*B, L)
    fields: tuple[str, ...]
    size: int  # B
    # data=mix (csetrain/data/mix.py): the batch's source, and whether its rows may serve as
    # each other's negatives (false: every anchor sees only its own positive and hard negatives)
    source: str = ""
    in_batch_negatives: bool = True

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            attention_mask=self.attention_mask.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Page-locked host copies, so a non-blocking copy to the GPU really overlaps."""
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.pin_memory(),
            attention_mask=self.attention_mask.pin_memory(),
        )

    def examples(self, start: int, end: int) -> Batch:
        """Examples [start, end) with every field, their own padding only (GradCache chunks)."""
        rows = torch.cat(
            [
                torch.arange(f * self.size + start, f * self.size + end)
                for f in range(len(self.fields))
            ]
        )
        mask = self.attention_mask[rows]
        width = int(mask.sum(1).max())
        ids, mask = self.input_ids[rows, :width], mask[:, :width]
        return dataclasses.replace(self, input_ids=ids, attention_mask=mask, size=end - start)

    def shard(self, rank: int, world: int) -> Batch:
        """This rank's 1/world of every field (DDP): examples [rank*b, (rank+1)*b)."""
        if world == 1:
            return self
        if self.size % world:
            raise ValueError(f"batch of {self.size} does not split over {world} ranks")
        b = self.size // world
        return self.examples(rank * b, (rank + 1) * b)

    def split(self, z: Tensor) -> dict[str, Tensor]:
        """(F*B, D) embeddings -> {field: (B, D)}."""
        return dict(zip(self.fields, z.split(self.size)))


class StepSampler:
    """Dataset indices for step k: a fresh seeded permutation per epoch, consumed in order.

    A batch is a pure function of (seed, step), so a resumed run sees exactly the batches the
    uninterrupted run would have seen.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int) -> None:
        if batch_size > num_rows:
            raise ConfigError(
                f"trainer.batch_size={batch_size} exceeds the corpus size {num_rows}: lower it or add data"
            )
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            gen = draw_generator(self.seed, epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_rows, generator=gen).tolist()
        return self._perm

    def indices(self, step: int) -> list[int]:
        out = []
        for pos in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(pos, self.num_rows)
            out.append(self._permutation(epoch)[offset])
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.num_rows


class Collator:
    """Rows -> Batch. `data_fields` are read from the dataset; when `augmented_positive` is set
    the `positive` view is made from the anchor by the augmentation (self-supervised): from its
    token ids (`augmentation.level == "tokens"`, the default) or from its raw text, tokenized here
    with the training truncation (`level == "text"`, e.g. Mirror-BERT's character spans)."""

    def __init__(
        self,
        data_fields: tuple[str, ...],
        augmentation,
        pad_id: int,
        special_ids: set[int],
        augmented_positive: bool,
        seed: int,
        tokenizer=None,
        max_length: int = 32,
    ) -> None:
        self.data_fields = data_fields
        self.augmentation = augmentation
        self.pad_id = pad_id
        self.special_ids = special_ids
        self.augmented_positive = augmented_positive
        self.seed = seed
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_level = augmented_positive and getattr(augmentation, "level", "tokens") == "text"

    @property
    def fields(self) -> tuple[str, ...]:
        if not self.augmented_positive:
            return self.data_fields
        return (
            "anchor",
            "positive",
            *[f for f in self.data_fields if f not in ("anchor", "positive")],
        )

    @property
    def columns(self) -> list[str]:
        """Dataset columns a batch needs (token ids; raw anchor text for text-level views)."""
        return [f"{f}_ids" for f in self.data_fields] + (["anchor"] if self.text_level else [])

    def _positive(self, rows: dict[str, list], rng: random.Random) -> list[list[int]]:
        if self.text_level:
            texts = [self.augmentation(text, rng) for text in rows["anchor"]]
            return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return [self.augmentation(ids, self.special_ids, rng) for ids in rows["anchor_ids"]]

    def __call__(self, rows: dict[str, list], step: int) -> Batch:
        views = {f: rows[f"{f}_ids"] for f in self.data_fields}
        if self.augmented_positive:
            rng = random.Random(draw_seed(self.seed, step))  # seeded per step: resumable
            views["positive"] = self._positive(rows, rng)
        sequences = [seq for f in self.fields for seq in views[f]]
        return Batch(*pad(sequences, self.pad_id), fields=self.fields, size=len(views["anchor"]))


def pad(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad to the longest sequence in the batch (dynamic padding): (ids, mask), (N, L) long.

    Kept instead of `tokenizer.pad`, which gives the same tensors (tests/test_data.py) but takes
    about 4x as long on this per-step path (~6 ms against ~1.4 ms for 256 rows of <= 32 tokens).
    """
    longest = max(map(len, sequences))
    ids = torch.tensor([[*s, *[pad_id] * (longest - len(s))] for s in sequences], dtype=torch.long)
    lengths = torch.tensor([len(s) for s in sequences])
    return ids, (torch.arange(longest) < lengths[:, None]).long()
