"""The sources of a `data=mix` run side by side: their tokenized rows as one index space, one
collator per source, and the merged corpus record (checksums, prompts, tags).

Different sources have different fields (wiki: `anchor`; SNLI: anchor/positive/hard_negative;
a retrieval set: query/document as anchor/positive). The objective is one for the whole run;
each source's batches carry the fields it wants that the source has, and:
- a source without `positive` gets the anchor's second (augmented) view, as in unsupervised
  SimCSE: the run's `augmentation` (dropout by default) makes it;
- a source without the miner's fields (`hard_negative` of negative_mining=hard_from_data) has
  no extra negatives in its batches: in-batch negatives only.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_right
from dataclasses import dataclass

from csetrain.config import ConfigError
from csetrain.data.collate import Batch, Collator
from csetrain.data.hard_negatives import expand_roles, role_fields
from csetrain.data.sources import Corpus


@dataclass
class MixSource:
    """One source of a mix: its corpus and tokenized rows, and its per-source settings."""

    name: str
    corpus: Corpus
    rows: object  # tokenized datasets.Dataset (`<field>_ids` columns)
    weight: float | None = None  # only with data.sampling=weights
    in_batch_negatives: bool = True  # false: each anchor sees its own candidates only


class MixedRows:
    """The sources' datasets as one row space: source i holds rows [offset_i, offset_i + n_i).
    Quacks like the `datasets.Dataset` the loop and the corpus-reading miners use:
    `select_columns`, `column_names` (those every source has), `len`, `rows[column]` (every
    source's column in order) and `rows[indices]` (a dict of columns, in the indices' order)."""

    def __init__(self, parts: list, sizes: list[int] | None = None) -> None:
        # sizes kept apart: a `datasets.Dataset` with no columns left reports 0 rows
        self.parts, self.sizes = parts, sizes or [len(p) for p in parts]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(parts))]

    def __len__(self) -> int:
        return sum(self.sizes)

    @property
    def column_names(self) -> list[str]:
        return [
            c for c in self.parts[0].column_names if all(c in p.column_names for p in self.parts)
        ]

    def select_columns(self, columns: list[str]) -> MixedRows:
        """Each source keeps the wanted columns it has (a wiki source has no `positive_ids`)."""
        return MixedRows(
            [p.select_columns([c for c in columns if c in p.column_names]) for p in self.parts],
            self.sizes,
        )

    def __getitem__(self, key):
        if isinstance(key, str):
            return [value for part in self.parts for value in part[key]]
        located = [(bisect_right(self.offsets, i) - 1, i) for i in key]
        sources = sorted({s for s, _ in located})
        if len(sources) == 1:  # one source per batch: a plain slice of that source
            s = sources[0]
            return self.parts[s][[i - self.offsets[s] for _, i in located]]
        fetched = {
            s: iter_rows(self.parts[s][[i - self.offsets[s] for t, i in located if t == s]])
            for s in sources
        }
        rows = [next(fetched[s]) for s, _ in located]  # back in the sampler's order
        return {column: [row[column] for row in rows] for column in rows[0]}


def iter_rows(columns: dict[str, list]):
    """dict of columns -> iterator over row dicts."""
    names = list(columns)
    return (dict(zip(names, values)) for values in zip(*(columns[n] for n in names)))


class MixCollator:
    """Rows of step k -> Batch with the collator of the step's source, tagged with the source's
    name and in-batch policy (`Batch.source`, `Batch.in_batch_negatives`)."""

    def __init__(self, collators: list[Collator], sources: list[MixSource], sampler) -> None:
        self.collators, self.sources, self.sampler = collators, sources, sampler

    @classmethod
    def per_source(cls, template: Collator, objective, sources, sampler) -> MixCollator:
        """`objective` names the roles a batch wants: its own data fields (a source must have
        them, `positive` aside) and its miner's (a source may lack them)."""
        collators = [source_collator(template, objective, s) for s in sources]
        if not sampler.one_source:
            shapes = {(c.data_fields, c.augmented_positive) for c in collators}
            policies = {s.in_batch_negatives for s in sources}
            if len(shapes) > 1 or len(policies) > 1:
                raise ConfigError(
                    "data.batch_from_one_source=false needs sources with the same fields and the "
                    "same in_batch_negatives: set it to true or mix like sources only"
                )
        return cls(collators, sources, sampler)

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for collator in self.collators for c in collator.columns))

    def __call__(self, rows: dict[str, list], step: int) -> Batch:
        source = self.sampler.source_of(step)
        if source is None:  # mixed batches: every source collates alike (checked above)
            batch = self.collators[0](rows, step)
            return dataclasses.replace(batch, in_batch_negatives=self.sources[0].in_batch_negatives)
        batch = self.collators[source](rows, step)
        policy = self.sources[source].in_batch_negatives
        return dataclasses.replace(
            batch, source=self.sources[source].name, in_batch_negatives=policy
        )


def source_collator(template: Collator, objective, source: MixSource) -> Collator:
    """The run's collator reshaped for one source: it reads the wanted roles' fields the source
    has (k hard negatives: `hard_negative_1..k`), and makes `positive` from the anchor by the
    augmentation when the source has none."""
    have = source.corpus.fields
    own = tuple(objective.data_fields)
    missing = [f for f in ("anchor", *own) if f != "positive" and not role_fields(f, have)]
    if missing:
        raise ConfigError(
            f"data.sources '{source.name}' provides {list(have)} but the objective needs "
            f"{list(dict.fromkeys(missing))}: drop the source or choose another objective"
        )
    roles = own + tuple(f for f in objective.miner.fields if f not in own)
    augmented = template.augmented_positive or ("positive" in roles and "positive" not in have)
    fields = [f for f in expand_roles(roles, have) if f in have]
    return Collator(
        data_fields=tuple(f for f in fields if not (augmented and f == "positive")),
        augmentation=template.augmentation,
        pad_id=template.pad_id,
        special_ids=template.special_ids,
        augmented_positive=augmented,
        seed=template.seed,
        tokenizer=template.tokenizer,
        max_length=source.corpus.max_length,
    )


def merge_prompts(sources: list[MixSource]) -> dict[str, str]:
    """The sources' prompts as one dict: a prompt name every source that has it agrees on
    keeps its name; a name the sources disagree on is kept per source as `<name>_<source>`."""
    values: dict[str, set[str]] = {}
    for s in sources:
        for name, text in s.corpus.prompts.items():
            values.setdefault(name, set()).add(text)
    merged = {}
    for s in sources:
        for name, text in s.corpus.prompts.items():
            merged[name if len(values[name]) == 1 else f"{name}_{s.name}"] = text
    return merged


def mixed_corpus(sources: list[MixSource], tags: dict[str, str]) -> Corpus:
    """The record of the mix as one Corpus (for checks, run tags and exported prompts); the
    rows themselves stay in the sources. Checksums are keyed `<source>/<file>`, a source's own
    tags `data.mix.<source>.<key>`."""
    fields = tuple(
        dict.fromkeys(f for s in sources for f in ("anchor", "positive", *s.corpus.fields))
    )
    checksums = {f"{s.name}/{k}": v for s in sources for k, v in s.corpus.checksums.items()}
    source_tags = {
        f"data.mix.{s.name}.{k.removeprefix('data.')}": v
        for s in sources
        for k, v in s.corpus.tags.items()
    }
    return Corpus(
        name="mix",
        records=[],
        fields=fields,
        checksums=checksums,
        max_length=max(s.corpus.max_length for s in sources),
        tags={**source_tags, **tags},
        prompts=merge_prompts(sources),
    )
