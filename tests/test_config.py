import json

import pytest

from semifinetune.config import (
    ConfigError,
    RunConfig,
    load_config,
    make_config,
    parse_assignments,
    save_config,
)


def test_defaults_are_the_guides_recipe():
    cfg = RunConfig()
    assert cfg.model_name == "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit"
    assert cfg.load_in_4bit is True
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (16, 16, 0.05)
    assert cfg.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (1, 4)
    assert (cfg.warmup_steps, cfg.max_steps, cfg.learning_rate) == (10, 100, 5e-5)
    assert (cfg.optim, cfg.weight_decay, cfg.lr_scheduler_type) == ("adamw_8bit", 0.01, "cosine")
    assert (cfg.seed, cfg.logging_steps, cfg.save_steps) == (42, 10, 50)
    assert cfg.max_seq_length == 1024
    assert (cfg.temperature, cfg.top_p) == (0.6, 0.95)  # DeepSeek's recommendation


def test_t4_profile_with_the_guide_recipe_keeps_the_guides_meaning():
    t4, recipe = make_config("t4", {"recipe": "guide"}).to_dict(), RunConfig().to_dict()
    changed = {k for k in recipe if t4[k] != recipe[k]}
    # one pass of 4, not 4 of 1; AdamW with its moments in fp32, fused
    assert changed == {"per_device_train_batch_size", "gradient_accumulation_steps", "optim"}
    assert t4["optim"] == "adamw_torch_fused" and (t4["learning_rate"], t4["weight_decay"]) == (5e-5, 0.01)
    assert t4["per_device_train_batch_size"] * t4["gradient_accumulation_steps"] == 4  # the guide's effective batch


def test_profiles_change_only_what_must_differ():
    recipe = RunConfig().to_dict()
    cpu = make_config("cpu", {"recipe": "guide"}).to_dict()
    changed = {k for k in recipe if recipe[k] != cpu[k]}
    assert "model_name" in changed and "load_in_4bit" in changed
    # how it learns is the recipe's: the guide's on the cpu machine too
    assert {"seed", "weight_decay", "lr_scheduler_type", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
            "learning_rate", "max_steps", "warmup_steps"}.isdisjoint(changed)


def test_recipes_are_chosen_apart_from_profiles():
    from semifinetune.config import RECIPES, overrides_of

    assert make_config("cpu").recipe == "facts" and make_config("t4").recipe == "facts"
    facts, guide = make_config("cpu"), make_config("cpu", {"recipe": "guide"})
    assert (guide.learning_rate, guide.lora_alpha, guide.max_steps) == (5e-5, 16, 100)
    assert facts.to_dict() == {**make_config("cpu", {"recipe": "guide"}).to_dict(), **RECIPES["facts"]["cpu"], "recipe": "facts"}
    assert make_config("cpu", '{"recipe": "guide", "max_steps": 7}').max_steps == 7  # overrides beat the recipe
    assert overrides_of(guide) == {"recipe": "guide"} and overrides_of(facts) == {}
    assert make_config("cpu", overrides_of(guide, max_steps=3)).to_dict() == {**guide.to_dict(), "max_steps": 3}
    with pytest.raises(ConfigError, match="Unknown recipe 'fast'. Valid recipes: guide, facts"):
        make_config("cpu", {"recipe": "fast"})


def test_best_checkpoint_needs_saves_on_evaluations():
    with pytest.raises(ConfigError, match="save_steps 5 is not a multiple of eval_steps 3"):
        make_config("tiny", {"save_steps": 5})
    assert make_config("tiny", {"save_steps": 5, "validation_file": ""}).save_steps == 5
    with pytest.raises(ConfigError, match="early_stopping_patience needs a validation_file"):
        make_config("tiny", {"early_stopping_patience": 2, "validation_file": ""})


def test_overrides_from_dict_and_cli_text():
    cfg = make_config("tiny", {"learning_rate": 1e-4, "lora_r": 8})
    assert (cfg.learning_rate, cfg.lora_r) == (1e-4, 8)
    assert parse_assignments(["max_steps=7", "target_modules=q_proj,v_proj", "gradient_checkpointing=false"]) == {
        "max_steps": 7,
        "target_modules": ["q_proj", "v_proj"],
        "gradient_checkpointing": False,
    }


def test_unknown_key_names_the_key_and_the_valid_keys():
    with pytest.raises(ConfigError, match=r"Unknown config key 'lr'.*learning_rate"):
        make_config("t4", {"lr": 1e-4})
    with pytest.raises(ConfigError, match=r"Unknown config key 'lr'"):
        parse_assignments(["lr=1e-4"])


def test_wrong_type_names_the_key_and_type():
    with pytest.raises(ConfigError, match=r"'max_steps' must be int, got str"):
        make_config("t4", {"max_steps": "100"})
    with pytest.raises(ConfigError, match=r"'learning_rate' must be float, got 'fast'"):
        parse_assignments(["learning_rate=fast"])
    with pytest.raises(ConfigError, match=r"'load_in_4bit' must be bool"):
        make_config("t4", {"load_in_4bit": 1})


@pytest.mark.parametrize(
    "key, value, valid",
    [
        ("learning_rate", 0.0, "in \\(0, 1\\)"),
        ("learning_rate", -1e-4, "in \\(0, 1\\)"),
        ("lora_r", 0, "positive"),
        ("temperature", -0.1, "0 or more"),
        ("top_p", 1.5, "\\(0, 1\\]"),
        ("top_p", 0.0, "\\(0, 1\\]"),
        ("max_steps", 0, "positive"),
        ("format", "alpaca", "'chat' or 'guide'"),
    ],
)
def test_out_of_range_settings_fail_with_the_valid_range(key, value, valid):
    with pytest.raises(ConfigError, match=rf"{key}.*out of range.*{valid}"):
        make_config("tiny", {key: value})


def test_overrides_as_json_or_yaml_text():
    """What `papermill -p overrides '...'` passes: JSON, or YAML (single quotes, `key: value`); quoted numbers read as --set does."""
    from semifinetune.config import parse_overrides

    for text in ('{"max_steps": 3}', "{'max_steps': 3}", "max_steps: 3"):
        assert make_config("tiny", text).max_steps == 3
    assert parse_overrides("learning_rate: 1e-3\ntarget_modules: q_proj,v_proj") == {
        "learning_rate": 1e-3, "target_modules": ["q_proj", "v_proj"]}
    assert parse_overrides("") == parse_overrides(None) == parse_overrides({}) == {}
    with pytest.raises(ConfigError, match=r"neither JSON nor YAML"):
        parse_overrides("{max_steps: [3")
    with pytest.raises(ConfigError, match=r"overrides must map config keys to values.*got list"):
        parse_overrides("[3]")


def test_profile_and_notebook_parameters_are_not_overrides():
    with pytest.raises(ConfigError, match=r"'profile' is not an override: choose it with the profile parameter"):
        make_config("tiny", {"profile": "cpu"})
    with pytest.raises(ConfigError, match=r"'profile' is not an override"):
        parse_assignments(["profile=cpu"])  # `setup --set profile=cpu` was accepted and ignored
    with pytest.raises(ConfigError, match=r"'run_dir' is a notebook parameter, not a config key"):
        make_config("tiny", "run_dir: runs/x")


def test_set_arguments_rebuild_the_config():
    from semifinetune.config import overrides_of, parse_assignments, set_arguments
    import shlex

    cfg = make_config("tiny", {"eval_file": "my data/eval.jsonl", "target_modules": ["q_proj", "v_proj"], "length_grouped": True})
    assert overrides_of(cfg, max_steps=12) == {"eval_file": "my data/eval.jsonl", "target_modules": ["q_proj", "v_proj"],
                                               "length_grouped": True, "max_steps": 12}
    words = shlex.split(set_arguments(cfg, max_steps=12))
    assert make_config("tiny", parse_assignments(words[1::2])) == make_config("tiny", {**overrides_of(cfg), "max_steps": 12})


def test_unknown_profile():
    with pytest.raises(ConfigError, match="Valid profiles: t4, cpu, tiny"):
        make_config("a100")


def test_save_and_load_round_trip(tmp_path):
    cfg = make_config("cpu", {"max_steps": 3})
    path = save_config(cfg, tmp_path)
    assert json.loads(path.read_text())["max_steps"] == 3
    assert load_config(tmp_path) == cfg
    assert load_config(tmp_path, {"max_steps": 5}).max_steps == 5


def test_load_config_errors_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="Run notebook 01_setup"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text('{"max_steps": 3,')
    with pytest.raises(ConfigError, match=r"config.json:1: not valid JSON"):
        load_config(tmp_path)
