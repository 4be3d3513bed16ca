import pytest

from cxr14.config import ConfigError, config_from_dict, load_config
from tests.conftest import REPO_ROOT, real_params, tiny_params


def test_real_params_load():
    cfg = load_config(REPO_ROOT / "params.yaml")
    assert cfg.data.source == "phantom"
    assert cfg.preprocess.size == 224
    assert cfg.train.lr == pytest.approx(1e-3)
    assert len(cfg.models) >= 2


def test_typo_names_key_and_suggests():
    params = real_params()
    params["train"]["lr_rate"] = 3e-4
    with pytest.raises(ConfigError, match=r"unknown key 'train.lr_rate' \(did you mean 'train.lr'\?\)"):
        config_from_dict(params)


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("train.epochs", "many", "train.epochs: expected an integer"),
        ("train.lr", -1.0, "train.lr must be > 0"),
        ("data.source", "kaggle", r"data.source: 'kaggle' is not one of"),
        ("split.test_fraction", 0.95, "split.val_fraction and split.test_fraction"),
        ("train.image_size", 512, "exceeds preprocess.size"),
        ("train.pretrained", "yes", "train.pretrained: expected true/false"),
    ],
)
def test_bad_values_name_the_key(dotted, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tiny_params(**{dotted: value}))


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "params.yaml")


def test_per_model_override_applies_to_that_model_only():
    cfg = config_from_dict(tiny_params(**{"train.overrides": {"resnet18": {"lr": 1e-3, "epochs": 4}}}))
    assert cfg.train_for("resnet18").lr == pytest.approx(1e-3) and cfg.train_for("resnet18").epochs == 4
    assert cfg.train_for("cnn").lr == pytest.approx(cfg.train.lr) and cfg.train_for("cnn").epochs == cfg.train.epochs
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.overrides.cnn.lrr' \(did you mean 'train.overrides.cnn.lr'\?\)"
    ):
        config_from_dict(tiny_params(**{"train.overrides": {"cnn": {"lrr": 1e-3}}}))


def test_official_split_needs_nih_and_views_are_checked():
    with pytest.raises(ConfigError, match="split.method 'official' needs data.source: nih"):
        config_from_dict(tiny_params(**{"split.method": "official"}))
    with pytest.raises(ConfigError, match=r"split.views must be a non-empty subset of \[PA, AP\]"):
        config_from_dict(tiny_params(**{"split.views": ["LL"]}))
    cfg = config_from_dict(tiny_params())
    assert cfg.split.resolved_method("nih") == "official" and cfg.split.resolved_method("phantom") == "patient"


@pytest.mark.parametrize("value", ["auto", True, False])
def test_pretrained_accepts_auto_or_a_boolean(value):
    assert config_from_dict(tiny_params(**{"train.pretrained": value})).train.pretrained == value


def test_zoo_overrides_choose_optimizer_weights_and_freezing():
    overrides = {
        "vit_v2": {"optimizer": "sgd", "momentum": 0.8},
        "resnet50": {"freeze_backbone": True, "pretrained_path": "/weights/resnet50.pth", "pretrained": True},
    }
    cfg = config_from_dict(tiny_params(**{"train.overrides": overrides}))
    vit_v2, resnet50, cnn = cfg.train_for("vit_v2"), cfg.train_for("resnet50"), cfg.train_for("cnn")
    assert (vit_v2.optimizer, vit_v2.momentum) == ("sgd", pytest.approx(0.8))
    assert (
        resnet50.freeze_backbone and resnet50.pretrained is True and resnet50.pretrained_path == "/weights/resnet50.pth"
    )
    assert (cnn.optimizer, cnn.freeze_backbone, cnn.pretrained_path) == ("adamw", False, None)
    with pytest.raises(ConfigError, match=r"train.overrides.vit_v2.optimizer: 'lamb' is not one of"):
        config_from_dict(tiny_params(**{"train.overrides": {"vit_v2": {"optimizer": "lamb"}}}))


def test_override_larger_than_the_cache_fails_only_for_a_listed_model():
    overrides = {"efficientnet_b4": {"image_size": 380}}
    config_from_dict(tiny_params(**{"train.overrides": overrides}))  # not in models: fine
    with pytest.raises(
        ConfigError,
        match=r"efficientnet_b4.image_size \(380\) exceeds preprocess.size \(64\): "
        r"raise preprocess.size to at least 380",
    ):
        config_from_dict(tiny_params(**{"train.overrides": overrides, "models": ["efficientnet_b4"]}))


def test_profile_counts_are_checked():
    with pytest.raises(ConfigError, match="profile.repeats must be >= 1, got 0"):
        config_from_dict(tiny_params(**{"profile.repeats": 0}))


@pytest.mark.parametrize(
    "dotted, value, message",
    [
        ("explain.cam_threshold", 1.0, r"explain.cam_threshold must be in \(0, 1\), got 1.0"),
        ("explain.tsne_points", 5, "explain.tsne_points must be >= 10, got 5"),
        ("train.focal_alpha", 1.5, r"train.focal_alpha must be in \[0, 1\], got 1.5"),
        ("train.step_gamma", 0.0, r"train.step_gamma must be in \(0, 1\], got 0.0"),
        ("train.overrides.vit_v2.momentum", 1.0, r"train.overrides.vit_v2.momentum must be in \[0, 1\), got 1.0"),
    ],
)
def test_range_table_names_the_key_and_the_range(dotted, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tiny_params(**{dotted: value}))


def test_a_bad_train_value_is_reported_once_not_per_override():
    with pytest.raises(ConfigError) as caught:
        config_from_dict(tiny_params(**{"train.momentum": 2.0}))
    assert str(caught.value).count("momentum") == 1


def _leaves(raw: dict, prefix: str = ""):
    """(dotted key, value) for every value params.yaml sets; per-model overrides down to their keys."""
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            yield from _leaves(value, dotted)
        else:
            yield dotted, value


def _lookup(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def test_committed_params_equal_the_built_in_defaults():
    """A partial params file is completed with the defaults, so they must be the committed values."""
    committed = load_config(REPO_ROOT / "params.yaml")
    defaults = config_from_dict({})
    differing = [
        f"{key}: params.yaml has {_lookup(committed, key)!r}, the default in config.py is {_lookup(defaults, key)!r}"
        for key, _ in _leaves(real_params())
        if _lookup(committed, key) != _lookup(defaults, key)
    ]
    assert not differing, "; ".join(differing)
    # Also no override (or other dict entry) that the defaults have and params.yaml lacks.
    assert set(defaults.train.overrides) == set(committed.train.overrides)
    assert committed == defaults


def test_partial_params_file_takes_the_committed_values(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 3.0e-4\n")
    cfg = load_config(path)
    committed = load_config(REPO_ROOT / "params.yaml")
    assert cfg.train.lr == pytest.approx(3e-4)
    assert (cfg.train.epochs, cfg.train.image_size, cfg.models) == (
        committed.train.epochs,
        committed.train.image_size,
        committed.models,
    )
    assert cfg.train.overrides == committed.train.overrides


def test_the_documented_way_to_clear_the_overrides_works_with_dvc(tmp_path):
    """params.yaml and the README give one way; DVC's own -S code (dvc exp run) applies it here."""
    from dvc.utils.hydra import apply_overrides

    clear = "-S '~train.overrides' -S '+train.overrides={}'"
    assert clear in (REPO_ROOT / "params.yaml").read_text()
    assert clear in (REPO_ROOT / "README.md").read_text()
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text())
    apply_overrides(path, ["~train.overrides", "+train.overrides={}"])
    assert load_config(path).train.overrides == {}


@pytest.mark.parametrize("text", ["", "# every setting was here\n", "{}\n", "null\n"])
def test_empty_params_file_is_refused(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path}: empty params file; restore it with `git checkout params.yaml`"):
        load_config(path)


def test_params_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- seed\n- 42\n")
    with pytest.raises(ConfigError, match=r"expected a mapping of settings \(key: value\), got a list; restore it"):
        load_config(path)
