"""Which configurations a sweep builds shared assets for before its trials (which only read
them): one per distinct ``trainers.assets.asset_signature`` of its points / param choices."""

import pytest

from vldistill.platform.sweep import SweepError, asset_configs
from vldistill.search_spaces import load_search_space, search_space_from_dict
from vldistill.trainers.config import load_train_config


def _configs(space):
    return asset_configs(space, load_train_config(list(space.overrides)))


def test_shipped_spaces_build_the_assets_of_every_text_source_and_strategy_they_sweep():
    loco = _configs(load_search_space("p1_loco"))
    # base (descriptors), no_cap (no caption feed needed), no_descriptors (class names)
    assert [c.distill.text.source for c in loco] == ["descriptors", "descriptors", "classname"]
    assert [c.distill.weights.get("cap", 0) > 0 for c in loco] == [True, False, True]
    p3 = _configs(load_search_space("prompt_diversification"))
    assert len(p3) == 4
    assert {c.data.synthetic.strategy for c in p3} == {"none", "mix", "random", "contrastive"}
    attrs = _configs(load_search_space("attribute_sources"))
    assert len(attrs) == 12  # 4 sources x 3 attribute files (one of them is the base)
    assert {(c.distill.text.source, c.distill.text.attributes) for c in attrs} == {
        (s, a) for s in ("classname", "templates", "descriptions", "descriptors") for a in ("full", "partial", "noisy")}
    # loss weights, learning rates, temperatures and students share the base's assets
    for name in ("default", "p1_losses", "dime_fm", "students", "smoke"):
        assert len(_configs(load_search_space(name))) == 1, name


def test_a_continuous_param_that_changes_an_asset_is_refused_by_name():
    space = search_space_from_dict({
        "name": "bad", "metric": "novel_acc", "mode": "max", "sampler": "random", "num_samples": 2,
        "seeds": [0], "overrides": ["experiment=smoke"],
        "params": {"data.world.image_size": {"int": [24, 40]}}}, "bad.yaml")
    with pytest.raises(SweepError, match=r"params\.data\.world\.image_size: a int param changes a shared asset"):
        _configs(space)
