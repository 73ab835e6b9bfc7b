"""The pieces of a training run a config names, each built and checked on its own: the
objective (with its miner, GradCache and regularizers), the dev evaluator, the data, and the
after-training reports. `csetrain/app/train.py` assembles them; `csetrain validate` and tests use
them alone."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from csetrain.app.settings import instantiate, model_option, plain
from csetrain.config import ConfigError
from csetrain.data.hard_negatives import role_fields
from csetrain.data.sources import Corpus, load_corpus
from csetrain.eval.grid import grid_after_training
from csetrain.grad_cache import GradCache
from csetrain.regularizers.regularized import Regularized

# `after_training: [name, ...]`: reports on the selected checkpoint after its test evaluation.
AFTER_TRAINING = {"grid": grid_after_training}  # every layer x prefix size on the dev task


def after_training(cfg: DictConfig) -> list[str]:
    """The config's `after_training` reports, each checked to exist."""
    names = list(cfg.get("after_training") or [])
    if unknown := [name for name in names if name not in AFTER_TRAINING]:
        raise ConfigError(f"after_training={unknown}: choose from {sorted(AFTER_TRAINING)}")
    return names


def check_fields(objective, corpus: Corpus) -> None:
    """The objective (and its miner) say what roles they need; the data must provide them
    (the role hard_negative: as `hard_negative` or as k fields `hard_negative_1..k`)."""
    missing = [f for f in objective.required_data_fields if not role_fields(f, corpus.fields)]
    if missing:
        raise ConfigError(
            f"objective {type(objective).__name__} (with negative_mining {type(objective.miner).__name__}) "
            f"needs data fields {missing} but data '{corpus.name}' provides {list(corpus.fields)}: choose a matching data= option"
        )


def build_miner(cfg: DictConfig):
    """The negative miner; a `guide` naming a model option (minilm-l6) gets that model built."""
    guide = cfg.negative_mining.get("guide")
    if isinstance(guide, str) and not Path(guide).expanduser().is_dir():
        option = model_option(guide)
        if option is None:
            raise ConfigError(
                f"negative_mining.guide='{guide}' is neither a model option (`csetrain list model`) nor a saved model folder"
            )
        return instantiate(cfg.negative_mining, guide=instantiate(option))
    return instantiate(cfg.negative_mining)


def build_objective(cfg: DictConfig, runtime=None):
    """The objective with its miner, run through GradCache (`trainer.grad_cache.chunk_size`,
    with a runtime) and any regularizers (`regularizer=[name,...]`) as wrappers."""
    objective = instantiate(cfg.objective, miner=build_miner(cfg))
    chunk_size = cfg.trainer.grad_cache.chunk_size if runtime is not None else 0
    if chunk_size:
        objective = GradCache(objective, chunk_size, runtime)
    regularizers = {
        name: instantiate(node) for name, node in (cfg.get("regularizer") or {}).items()
    }
    return Regularized(objective, regularizers) if regularizers else objective


def dev_evaluator(cfg: DictConfig):
    """The selection evaluator; selecting a checkpoint on test data is refused."""
    evaluator = instantiate(cfg.dev_eval)
    if getattr(evaluator, "split", "dev") == "test":
        raise ConfigError(
            "dev_eval scores a test split: select on dev (eval@dev_eval=stsb_dev), test once with eval="
        )
    return evaluator


def load_data(data: DictConfig) -> Corpus:
    """The corpus of a `data` option, with its `instruction` (if any) applied."""
    node = plain(data)
    instruction = node.pop("instruction", None)
    return load_corpus(instantiate(node), instruction)
