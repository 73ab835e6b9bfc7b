"""Every YAML option composes and builds; plain settings reject typos and wrong types."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from csetrain.app.settings import config_dir, instantiate, register_resolvers, validate_settings
from csetrain.config import ConfigError

GROUPS = [
    "model",
    "data",
    "augmentation",
    "negative_mining",
    "objective",
    "regularizer",
    "eval",
    "trainer",
    "tracking",
    "experiment",
]
HUB_MODELS = {"bert-base-uncased", "roberta-base"}


def options(group):
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _compose(overrides, name="train"):
    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option, data_dir):
    key = "eval@dev_eval" if group == "eval" and option == "stsb_dev" else group
    if option.startswith("nv_embed"):
        pytest.skip("needs its data file and model: tests/test_nv_embed.py composes it")
    overrides = [f"{key}={option}", f"paths.data_dir={data_dir}"]
    if option == "saved":
        overrides.append("model.path=/nonexistent")
    if option in ("hf", "hf_decoder"):
        overrides.append("model.name_or_path=/nonexistent")
    cfg = _compose(overrides)
    OmegaConf.resolve(cfg)
    validate_settings(cfg)


@pytest.mark.parametrize("group", ["augmentation", "negative_mining", "objective"])
def test_component_options_build(group, data_dir):
    for option in options(group):
        cfg = _compose([f"{group}={option}", f"paths.data_dir={data_dir}"])
        built = instantiate(
            cfg[group],
            **({"miner": instantiate(cfg.negative_mining)} if group == "objective" else {}),
        )
        if option.isidentifier():  # file name = option name (`2dmse` cannot be a module name)
            assert type(built).__module__.split(".")[-1] == option


def test_eval_and_data_options_build_against_the_data_pack(data_dir):
    for option in options("eval"):
        cfg = _compose([f"eval={option}", f"paths.data_dir={data_dir}"])
        assert instantiate(cfg.eval).tasks
    for option in ("wiki", "nli", "sample", "sample_nli"):
        cfg = _compose([f"data={option}", f"paths.data_dir={data_dir}"])
        assert instantiate(cfg.data).load().records


@pytest.mark.parametrize(
    "option", [o for o in options("model") if o not in HUB_MODELS | {"saved", "hf", "hf_decoder"}]
)
def test_offline_models_build(option):
    encoder = instantiate(_compose([f"model={option}"]).model)
    assert encoder.encode(["a sentence"]).shape == (1, encoder.output_dim)


@pytest.mark.parametrize("option", sorted(HUB_MODELS))
def test_hub_models_fail_offline_with_one_clear_line(option, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to find offline
    with pytest.raises(ConfigError, match=f"cannot load model '{option}'.*model=minilm-l6"):
        instantiate(_compose([f"model={option}"]).model)


def test_settings_schema_rejects_typos_and_types():
    cfg = _compose(["+trainer.lrr=1"])
    with pytest.raises(ConfigError, match="trainer.lrr"):
        validate_settings(cfg)
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        validate_settings(_compose(["trainer.max_steps=ten"]))
    with pytest.raises(ConfigError, match="trainer.precision"):
        validate_settings(_compose(["trainer.precision=fp8"]))


def test_objective_picks_its_companion_miner_but_the_command_line_wins():
    assert _compose(["objective=simcse_sup"]).negative_mining._target_.endswith("HardFromData")
    cfg = _compose(["objective=simcse_sup", "negative_mining=in_batch"])
    assert cfg.negative_mining._target_.endswith("InBatch")


def test_experiments_carry_published_recipes():
    unsup = _compose(["experiment=simcse_unsup_bert_base"])
    assert (
        unsup.trainer.batch_size,
        unsup.trainer.lr,
        unsup.objective.temperature,
        unsup.data.max_length,
    ) == (64, 3e-5, 0.05, 32)
    assert (unsup.model.pooler, unsup.model.mlp_head, unsup.trainer.eval_every) == (
        "cls",
        "train_only",
        125,
    )
    sup = _compose(["experiment=simcse_sup_bert_base"])
    assert (sup.trainer.batch_size, sup.trainer.lr, sup.model.mlp_head) == (512, 5e-5, "always")
    assert sup.negative_mining._target_.endswith("HardFromData")
