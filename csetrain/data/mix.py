"""`data=mix`: several corpora in one run. Which source a step draws from, and which of its rows,
are a pure function of (seed, step), so a resumed mixed run sees exactly the batches of an
uninterrupted one; with `batch_from_one_source` (the default) every batch holds one source only,
so its in-batch negatives never come from another domain (nomic-embed, NV-Embed).

Seeding (csetrain/seeding.py): the source of draw d is `searchsorted(cumsum(p), u_d)` with u the
float64 `torch.rand` of block d // 4096 in stream CHOICE_STREAM; source i shuffles its own rows
with a StepSampler seeded `seed + SOURCE_SEED_STEP * i`, so source 0 of a one-source mix shuffles
exactly as the plain `data=<option>` run does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from csetrain.config import ConfigError
from csetrain.data.collate import StepSampler
from csetrain.data.mix_sources import MixCollator, MixedRows, MixSource, mixed_corpus  # noqa: F401
from csetrain.seeding import draw_generator

SAMPLING = ("proportional", "uniform", "temperature", "weights")
CHOICE_STREAM = 900_007  # the source draws' seeding stream
SOURCE_SEED_STEP = 1_000  # source i's shuffle seed: seed + 1000 * i
BLOCK = 4096  # source draws made (and counted) at a time


def probabilities(
    sizes: list[int],
    sampling: str = "proportional",
    temperature: float = 1.0,
    weights: list[float | None] | None = None,
) -> list[float]:
    """Each source's probability: `proportional` p_i = n_i / sum n; `uniform` 1/k; `temperature`
    p_i ∝ n_i^(1/temperature) (mT5/XLM-R's rule: 1 = proportional, large = uniform);
    `weights` p_i ∝ the source's `weight`."""
    if sampling == "proportional":
        raw = [float(n) for n in sizes]
    elif sampling == "uniform":
        raw = [1.0] * len(sizes)
    elif sampling == "temperature":
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"data.temperature={temperature}: must be a number > 0")
        raw = [float(n) ** (1.0 / temperature) for n in sizes]
    elif sampling == "weights":
        if weights is None or any(not isinstance(w, (int, float)) or w < 0 for w in weights):
            raise ConfigError(
                "data.sampling=weights: give every data.sources entry a `weight` >= 0"
            )
        raw = [float(w) for w in weights]
    else:
        raise ConfigError(f"data.sampling={sampling!r} is not one of {list(SAMPLING)}")
    total = sum(raw)
    if total <= 0:
        raise ConfigError(f"data.sampling={sampling}: the weights sum to 0; give one a weight > 0")
    return [r / total for r in raw]


class MixSampler:
    """The rows of step k, like StepSampler, plus which source they came from.

    A step makes one draw of `batch_size` rows (one source per batch) or `batch_size` draws of
    one row each (mixed batches). Draw d picks its source with the configured probabilities; the
    r-th draw of source i takes that source's r-th `take` rows of its own epoch permutations, so
    each source's epoch position is a pure function of (seed, step) as well.
    """

    def __init__(
        self,
        names: list[str],
        sizes: list[int],
        probs: list[float],
        batch_size: int,
        seed: int,
        one_source: bool = True,
    ) -> None:
        self.names, self.sizes, self.batch_size, self.seed = names, sizes, batch_size, seed
        self.one_source = one_source
        self.take, self.per_step = (batch_size, 1) if one_source else (1, batch_size)
        for name, n in zip(names, sizes):
            if self.take > n:
                raise ConfigError(
                    f"data.sources '{name}' has {n} rows, fewer than trainer.batch_size={batch_size} "
                    "(one source per batch): lower the batch size or drop the source"
                )
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.streams = [
            StepSampler(n, self.take, seed + SOURCE_SEED_STEP * i) for i, n in enumerate(sizes)
        ]
        self._cumulative = torch.tensor(probs, dtype=torch.float64).cumsum(0)
        self._blocks: list[torch.Tensor] = []  # the source of every draw, BLOCK at a time
        self._before = [torch.zeros(len(sizes), dtype=torch.long)]  # draws per source before

    def _block(self, b: int) -> torch.Tensor:
        while len(self._blocks) <= b:  # blocks are drawn in order, once: counts stay exact
            u = torch.rand(
                BLOCK,
                generator=draw_generator(self.seed, len(self._blocks), CHOICE_STREAM),
                dtype=torch.float64,
            )
            block = torch.searchsorted(self._cumulative, u, right=True)
            block = block.clamp_(max=len(self.sizes) - 1)  # u above a rounded-down last sum
            self._blocks.append(block)
            self._before.append(self._before[-1] + torch.bincount(block, minlength=len(self.sizes)))
        return self._blocks[b]

    def draw(self, d: int) -> tuple[int, int]:
        """(source, how many draws of that source came before) of draw `d`."""
        b, offset = divmod(d, BLOCK)
        block = self._block(b)
        source = int(block[offset])
        return source, int(self._before[b][source]) + int((block[:offset] == source).sum())

    def source_of(self, step: int) -> int | None:
        """The one source of step `step`'s batch (None for mixed batches)."""
        return self.draw(step)[0] if self.one_source else None

    def indices(self, step: int) -> list[int]:
        out = []
        for d in range(step * self.per_step, (step + 1) * self.per_step):
            source, rank = self.draw(d)
            out += [self.offsets[source] + i for i in self.streams[source].indices(rank)]
        return out

    def rows_seen(self, steps: int) -> dict[str, int]:
        """Rows each source contributed to steps [0, steps)."""
        b, offset = divmod(steps * self.per_step, BLOCK)
        block = self._block(b)
        counts = self._before[b] + torch.bincount(block[:offset], minlength=len(self.sizes))
        return {name: int(c) * self.take for name, c in zip(self.names, counts)}

    def epoch_of(self, step: int) -> float:
        """Epochs over all sources' rows together (each source's own count: rows_seen)."""
        return step * self.batch_size / sum(self.sizes)


@dataclass
class MixSpec:
    """The `data=mix` node as written (conf/data/mix.yaml), checked without loading anything
    (`csetrain validate` builds it); csetrain/app/mix.py composes and loads its sources."""

    sources: list
    name: str = "mix"
    sampling: str = "proportional"
    temperature: float = 2.0
    batch_from_one_source: bool = True

    def __post_init__(self) -> None:
        entries = self.sources if isinstance(self.sources, Sequence) else None
        if not entries or not all(
            isinstance(e, Mapping) and isinstance(e.get("option"), str) for e in entries
        ):
            raise ConfigError(
                f"data.sources={self.sources!r}: give a list of entries like {{option: wiki}}"
            )
        if not isinstance(self.batch_from_one_source, bool):
            raise ConfigError(
                f"data.batch_from_one_source={self.batch_from_one_source!r}: true or false"
            )
        probabilities([1], self.sampling, self.temperature, [1.0])  # the rule and its T


@dataclass
class Mix:
    """The sources of `data=mix` assembled for training: rows, sampler, merged corpus, tags."""

    sources: list[MixSource]
    spec: MixSpec
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"data.sources names {names}: give each source its own `name` (default: the option)"
            )
        sizes = [len(s.rows) for s in self.sources]
        weights = [s.weight for s in self.sources]
        spec = self.spec
        if spec.sampling != "weights" and any(w is not None for w in weights):
            raise ConfigError(
                f"data.sources weights are read only with data.sampling=weights (now {spec.sampling!r}): "
                "set data.sampling=weights or drop the weights"
            )
        self.probabilities = probabilities(sizes, spec.sampling, spec.temperature, weights)
        self.sampler = MixSampler(
            names, sizes, self.probabilities, self.batch_size, self.seed, spec.batch_from_one_source
        )
        self.rows = MixedRows([s.rows for s in self.sources])
        self.corpus = mixed_corpus(self.sources, self.describe())

    def describe(self) -> dict[str, str]:
        """The run tags that record the mix."""
        spec = self.spec
        rule = spec.sampling + (f"(T={spec.temperature})" if spec.sampling == "temperature" else "")
        tags = {
            "data.mix.sources": ",".join(s.name for s in self.sources),
            "data.mix.sampling": rule,
            "data.mix.batch_from_one_source": str(spec.batch_from_one_source).lower(),
        }
        for source, p in zip(self.sources, self.probabilities):
            tags[f"data.mix.p.{source.name}"] = f"{p:.6f}"
            tags[f"data.mix.rows.{source.name}"] = str(len(source.rows))
            if not source.in_batch_negatives:
                tags[f"data.mix.in_batch_negatives.{source.name}"] = "false"
        return tags

    def collator(self, template, objective) -> MixCollator:
        """One collator per source, shaped like `template` (the run's Collator) but reading the
        fields that source has: see MixCollator."""
        return MixCollator.per_source(template, objective, self.sources, self.sampler)


def source_metrics(sampler, losses: dict[str, list[torch.Tensor]], done: int) -> dict[str, float]:
    """A mixed run's per-source train metrics: each source's mean loss over the logging window
    (the steps that drew from it) and the rows it has contributed so far; {} for one corpus."""
    if not isinstance(sampler, MixSampler):
        return {}
    metrics = {f"train/loss/{s}": torch.stack(v).float().mean().item() for s, v in losses.items()}
    metrics.update({f"train/rows/{s}": float(n) for s, n in sampler.rows_seen(done).items()})
    return metrics
