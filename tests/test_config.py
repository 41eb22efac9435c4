"""Config schema: recipes load and validate, overrides apply, bad keys and types fail in one line."""

from __future__ import annotations

import pytest

from vlmgrpo.config import Config, list_recipes, load_config, load_recipe_dict, parse_override
from vlmgrpo.errors import ConfigError


@pytest.mark.parametrize("name", list_recipes())
def test_every_packaged_recipe_loads_and_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert cfg.rewards, f"recipe {name} has no reward"
    from vlmgrpo.rewards import resolve_reward

    for r in cfg.rewards:
        resolve_reward(r.name)  # the reward exists


def test_overrides_apply_with_yaml_types():
    cfg = load_config(
        "demo",
        ["optim.lr=1e-5", "rollout.group_size=4", "model.lora.enabled=true", "optim.betas=[0.9, 0.999]"],
    )
    assert cfg.optim.lr == 1e-5 and cfg.rollout.group_size == 4 and cfg.model.lora.enabled
    assert cfg.optim.betas == [0.9, 0.999]


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.learning_rat'.*"):
        load_config("demo", ["optim.learning_rat=1"])
    with pytest.raises(ConfigError, match=r"did you mean 'rollout.group_size'"):
        load_config("demo", ["rollout.group_sise=4"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"optim.lr: expected a number, got str 'fast'"):
        load_config("demo", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"grpo.loss: 'reinforce' is not one of"):
        load_config("demo", ["grpo.loss=reinforce"])


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match=r"unknown recipe 'dmeo'; did you mean 'demo'"):
        load_config("dmeo")


def test_recipe_file_with_wrong_types(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("base: demo\ntrain:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"train.steps: expected an integer, got str 'many'"):
        load_config(str(p))
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_config(str(p))


def test_a_misspelled_base_names_the_file_that_asks_for_it(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("base: area-tny\n")  # it said only "unknown recipe 'area-tny'; ..."
    with pytest.raises(
        ConfigError, match=r"mine.yaml: base: unknown recipe 'area-tny'; did you mean 'area-tiny'"
    ):
        load_config(str(p))


def test_base_recipe_is_merged(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("base: demo\noptim:\n  lr: 0.5\n")
    d = load_recipe_dict(str(p))
    assert d["optim"]["lr"] == 0.5 and d["rollout"]["group_size"] == 8


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="grpo.beta > 0 needs a reference"):
        load_config("demo", ["grpo.beta=0.1"])


def test_parse_override_errors():
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")


def test_set_reaches_into_a_list_entry():
    cfg = load_config(
        "cycle-charxiv",
        ["rewards[0].kwargs.generator_kwargs={base_url: 'http://h:1'}", "rewards[0].weight=2"],
    )
    assert (
        cfg.rewards[0].kwargs["generator_kwargs"] == {"base_url": "http://h:1"} and cfg.rewards[0].weight == 2
    )
    assert cfg.rewards[0].kwargs["embedder"] == "dinov2"  # the rest of the entry is kept
    with pytest.raises(ConfigError, match=r"'rewards' has 1 entries; no index 3"):
        load_config("cycle-charxiv", ["rewards[3].weight=1"])
    with pytest.raises(ConfigError, match=r"needs a non-negative integer index"):
        load_config("cycle-charxiv", ["rewards[x].weight=1"])
    # a dotted index (the way some tools write it) used to say only "'rewards' is not a section"
    with pytest.raises(ConfigError, match=r"'rewards' is a list; name an entry, e.g. rewards\[0\].weight$"):
        load_config("cycle-charxiv", ["rewards.0.weight=1"])
    with pytest.raises(ConfigError, match=r"e.g. rewards\[0\].kwargs.x$"):
        load_config("cycle-charxiv", ["rewards.kwargs.x=1"])


def test_a_group_of_one_is_refused():
    # group_size 1 used to train for every step with all advantages 0 and exit 0
    with pytest.raises(ConfigError, match=r"rollout.group_size: GRPO needs at least 2 completions"):
        load_config("area-tiny", ["rollout.group_size=1"])
    load_config("area-tiny", ["rollout.group_size=1", "train.steps=0", "warmup.steps=5"])  # no GRPO step


def test_a_runs_config_yaml_keeps_its_recipe_name(tmp_path):
    """The resume hint says `--recipe RUN/config.yaml`: the resumed run's config.yaml and report then
    named the recipe "config" (the file's stem), not the recipe the run came from."""
    from vlmgrpo.config import save_config

    save_config(load_config("area-tiny"), tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")).recipe == "area-tiny"
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: area-tiny\n")
    assert load_config(str(mine)).recipe == "mine"  # a recipe of one's own keeps its file's name
