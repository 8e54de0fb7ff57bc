"""Config loading: presets, overrides, unknown keys with suggestions, value checks."""

import pytest

from cyflat.config import ConfigError, config_hash, list_presets, load_config, parse_complex


def test_presets_shipped():
    assert {"dwork", "dwork-gpu", "quintic-2param", "fermat"} <= set(list_presets())
    for name in list_presets():
        cfg = load_config(name)
        assert cfg.name == name


def test_gpu_preset_scale():
    cfg = load_config("dwork-gpu")
    assert cfg.model.k == 6 and cfg.model.layers == [4096, 4096]


def test_fermat_preset_is_free_h_k4():
    cfg = load_config("fermat")
    assert cfg.model.kind == "free" and cfg.model.k == 4 and cfg.model.basis == "reduced"
    assert cfg.moduli.region == "point"


def test_overrides_typed():
    cfg = load_config("dwork", ["train.time_limit=12.5", "model.layers=[8,8]", "moduli.center=['1+1j']"])
    assert cfg.train.time_limit == 12.5
    assert cfg.model.layers == [8, 8]
    assert parse_complex(cfg.moduli.center[0]) == 1 + 1j


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.learnig_rate=1", "train.learning_rate"),
        ("model.layer=[3]", "model.layers"),
        ("steps=5", "train.steps"),
    ],
)
def test_unknown_key_suggests_nearest(override, expected):
    with pytest.raises(ConfigError, match=f"did you mean '{expected}'"):
        load_config("dwork", [override])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.k=abc", "model.k"),
        ("model.kind=cnn", "model.kind"),
        ("train.dtype=float16", "train.dtype"),
        ("train.steps=0", "train.steps"),
        ("moduli.center=['x']", "moduli.center"),
        ("notkeyvalue", "key=value"),
    ],
)
def test_bad_values_named(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config("dwork", [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="neither a shipped preset"):
        load_config("no/such/file.yaml")


def test_config_hash_tracks_model_not_budget():
    a = load_config("dwork")
    assert config_hash(a) == config_hash(load_config("dwork", ["train.time_limit=5"]))
    assert config_hash(a) != config_hash(load_config("dwork", ["model.k=2"]))
    assert config_hash(a) != config_hash(load_config("dwork", ["train.dtype=float32"]))
