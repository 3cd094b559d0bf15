"""Config: every group composes and validates; bad keys and types are named (no platform code)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vldistill.trainers.config import ConfigError, TrainConfig, from_dict, load_train_config, to_dict

CONF = Path(__file__).resolve().parents[2] / "vldistill" / "conf"
GROUP_OPTIONS = [(g.name, f.stem) for g in sorted(CONF.iterdir()) if g.is_dir() and g.name != "__pycache__"
                 for f in sorted(g.glob("*.yaml")) if g.name != "data" or f.stem != "folder"]


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_every_config_group_option_composes_and_validates(group, option):
    cfg = load_train_config([f"{group}={option}"])
    assert isinstance(cfg, TrainConfig)


def test_folder_data_requires_a_root():
    with pytest.raises(ConfigError, match="data.root"):
        load_train_config(["data=folder"])


def test_round_trip_through_a_plain_dict_is_lossless():
    cfg = load_train_config(["distill=cls_im_cst_vlprox", "seed=3"])
    assert from_dict(to_dict(cfg)) == cfg


def test_unknown_key_is_named_with_valid_options():
    with pytest.raises(ConfigError) as e:
        from_dict({"optim": {"lrr": 0.1}})
    assert "optim.lrr" in str(e.value) and "lr" in str(e.value)


@pytest.mark.parametrize("data,key", [
    ({"optim": {"epochs": "ten"}}, "optim.epochs"),
    ({"optim": {"lr": True}}, "optim.lr"),
    ({"student": {"kwargs": 3}}, "student.kwargs"),
    ({"distill": {"weights": {"cls": -1.0}}}, "distill.weights.cls"),
    ({"distill": {"weights": {"cls": 0.0}}}, "distill.weights"),
    ({"data": {"train_fraction": 1.5}}, "data.train_fraction"),
])
def test_wrong_type_or_value_names_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(data)


def test_bf16_and_channels_last_default_to_cuda_only():
    from vldistill.trainers.config import load_train_config
    cfg = load_train_config([])
    assert cfg.precision == "auto" and cfg.channels_last is None
    assert cfg.bf16_on("cuda") and not cfg.bf16_on("cpu")
    assert cfg.channels_last_on("cuda") and not cfg.channels_last_on("cpu")
    forced = load_train_config(["precision=fp32", "channels_last=false"])
    assert not forced.bf16_on("cuda") and not forced.channels_last_on("cuda")
    on = load_train_config(["precision=bf16", "channels_last=true"])
    assert on.bf16_on("cpu") and on.channels_last_on("cpu")
