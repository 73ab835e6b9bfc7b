"""`data=mix`: compose each `data.sources` entry from its own data option
(conf/data/<option>.yaml plus the entry's overrides), load and tokenize it as a run of that
option alone would (same cache entries), and assemble the library's `Mix` (csetrain/data/mix.py).

An entry: `{option: wiki, name: ..., weight: ..., instruction: ..., in_batch_negatives: ...,
<any key of that option>: ...}`; `name` defaults to the option and names the source in metrics
and tags."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from csetrain.app.settings import config_dir, instantiate, plain, register_resolvers
from csetrain.config import ConfigError
from csetrain.data.cache import tokenized_dataset
from csetrain.data.hard_negatives import role_fields
from csetrain.data.mix import Mix, MixSource, MixSpec
from csetrain.data.sources import load_corpus
from csetrain.objectives.base import InfoNCEObjective, Objective

ENTRY_KEYS = ("option", "name", "weight", "in_batch_negatives")  # the mix's own keys


def mixed_sources(cfg: DictConfig, objective, tokenizer, settings) -> Mix | None:
    """The `Mix` of a `data=mix` config (None for any other data option)."""
    if "sources" not in cfg.data:
        return None
    node = {k: v for k, v in plain(cfg.data).items() if k != "_target_"}
    if "instruction" in node:  # each source has its own task
        raise ConfigError(
            "data.instruction: a mix has no single task; give each source its own "
            "(data.sources=[{option: nli, instruction: ...}, ...])"
        )
    if unknown := sorted(set(node) - set(MixSpec.__dataclass_fields__)):
        raise ConfigError(
            f"data.{unknown[0]}: not a data=mix key; use {sorted(MixSpec.__dataclass_fields__)}"
        )
    spec = MixSpec(**node)
    inner = getattr(objective, "inner", objective)
    if type(inner).batch_indices is not Objective.batch_indices:
        raise ConfigError(
            f"objective {type(inner).__name__} composes its own batches, which data=mix cannot "
            "keep to one source: choose another objective or a single data option"
        )
    sources = [
        load_source(cfg, entry, i, tokenizer, settings.paths.cache_dir)
        for i, entry in enumerate(spec.sources)
    ]
    check_in_batch_policy(inner, sources)
    return Mix(sources, spec, settings.trainer.batch_size, settings.trainer.seed)


def load_source(cfg: DictConfig, entry, index: int, tokenizer, cache_dir) -> MixSource:
    """One entry: its option composed and overridden, loaded (with its instruction) and
    tokenized."""
    where = f"data.sources[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("option"), str):
        raise ConfigError(f"{where}={entry!r}: give the data option, e.g. {{option: wiki}}")
    option = entry["option"]
    path = config_dir() / "data" / f"{option}.yaml"
    if option == "mix" or not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml") if p.stem != "mix")
        raise ConfigError(f"{where}.option={option!r}: choose a data option from {choices}")
    overrides = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    node = resolved_option(cfg, OmegaConf.merge(OmegaConf.load(path), overrides))
    instruction = node.pop("instruction", None)
    corpus = load_corpus(instantiate(node), instruction)
    in_batch = entry.get("in_batch_negatives", True)
    if not isinstance(in_batch, bool):
        raise ConfigError(f"{where}.in_batch_negatives={in_batch!r}: give true or false")
    return MixSource(
        name=str(entry.get("name") or option),
        corpus=corpus,
        rows=tokenized_dataset(corpus, tokenizer, cache_dir),
        weight=entry.get("weight"),
        in_batch_negatives=in_batch,
    )


def resolved_option(cfg: DictConfig, node: DictConfig) -> dict:
    """The option's node with its interpolations (`${paths.data_dir}`, `${assets:sample}`)
    resolved against the run's config, as plain values."""
    register_resolvers()
    root = OmegaConf.create({"paths": plain(cfg.paths), "data": node})
    return plain(root.data)


def check_in_batch_policy(objective, sources: list[MixSource]) -> None:
    """`in_batch_negatives: false` is honoured by the InfoNCE loss of the SimCSE family (its
    own-candidates branch) and needs the source's own hard negatives, or nothing is left to
    contrast with."""
    off = [s for s in sources if not s.in_batch_negatives]
    if not off:
        return
    if type(objective).loss is not InfoNCEObjective.loss:
        raise ConfigError(
            f"data.sources '{off[0].name}' in_batch_negatives=false: objective "
            f"{type(objective).__name__} does not support it; use simcse_sup or simcse_unsup"
        )
    fields = objective.miner.fields
    for s in off:
        if not fields or any(not role_fields(f, s.corpus.fields) for f in fields):
            raise ConfigError(
                f"data.sources '{s.name}' in_batch_negatives=false leaves its anchors no negatives: "
                "it needs hard negatives of its own (a hard_negative field and "
                "negative_mining=hard_from_data), or set in_batch_negatives: true"
            )
