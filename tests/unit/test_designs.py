"""Ablation designs: the generated configurations, comparisons and aliases against
hand-written expectations; design spaces load, round-trip and are validated before launch."""

import pytest
import yaml

from vldistill.search_spaces import SearchSpaceError, load_search_space, search_space_from_dict
from vldistill.search_spaces.designs import (defining_relation, parse_design, space_comparisons,
                                             space_points, two_level_design)


def _points(design):
    return [(p.name, p.assignment) for p in design.points]


def _space(design, **extra):
    return search_space_from_dict({"name": "t", "metric": "novel_acc", "mode": "max", "design": design, **extra},
                                  source="t.yaml")


def test_loco_points_and_comparisons():
    d = parse_design({"type": "loco", "base": {"a.x": 1.0},
                      "components": {"x": {"a.x": 0.0}, "y": {"a.y": "off", "a.z": 0}}}, "t.yaml")
    assert _points(d) == [("base", {"a.x": 1.0}), ("no_x", {"a.x": 0.0}),
                          ("no_y", {"a.x": 1.0, "a.y": "off", "a.z": 0})]
    assert [(c.name, c.weights) for c in d.comparisons] == [
        ("x", {"base": 1.0, "no_x": -1.0}), ("y", {"base": 1.0, "no_y": -1.0})]
    assert d.keys == ["a.x", "a.y", "a.z"]


def test_add_one_is_the_mirror_of_loco():
    d = parse_design({"type": "add_one", "components": {"x": {"a.x": 1.0}, "y": {"a.y": 1.0}}}, "t")
    assert _points(d) == [("base", {}), ("add_x", {"a.x": 1.0}), ("add_y", {"a.y": 1.0})]
    assert [(c.name, c.weights) for c in d.comparisons] == [
        ("x", {"add_x": 1.0, "base": -1.0}), ("y", {"add_y": 1.0, "base": -1.0})]


def test_one_at_a_time_varies_one_factor_from_the_base():
    d = parse_design({"type": "one_at_a_time", "factors": {"a.lr": [0.1, 0.01, 1.0], "a.k": [1, 5]}}, "t")
    base = {"a.lr": 0.1, "a.k": 1}
    assert _points(d) == [("base", base), ("a.lr=0.01", {"a.lr": 0.01, "a.k": 1}),
                          ("a.lr=1.0", {"a.lr": 1.0, "a.k": 1}), ("a.k=5", {"a.lr": 0.1, "a.k": 5})]
    assert [c.weights for c in d.comparisons][2] == {"a.k=5": 1.0, "base": -1.0}


def test_full_factorial_standard_order_and_main_effects():
    d = parse_design({"type": "full_factorial", "factors": {"x": {"a.x": [0, 1]}, "a.y": [0, 1]}}, "t")
    assert _points(d) == [("(1)", {"a.x": 0, "a.y": 0}), ("a", {"a.x": 1, "a.y": 0}),
                          ("b", {"a.x": 0, "a.y": 1}), ("ab", {"a.x": 1, "a.y": 1})]
    assert [(c.name, c.weights) for c in d.comparisons] == [
        ("x", {"(1)": -0.5, "a": 0.5, "b": -0.5, "ab": 0.5}),
        ("a.y", {"(1)": -0.5, "a": -0.5, "b": 0.5, "ab": 0.5})]
    assert d.resolution is None and d.aliases == {}


def test_fractional_2_5_minus_2_runs_resolution_and_aliases():
    factors = {c: {f"f.{c}": [0, 1]} for c in "abcde"}
    d = two_level_design(factors, {}, ("D=AB", "E=AC"))
    # Basic factors A, B, C in standard order; D = AB, E = AC; Yates names.
    assert [p.name for p in d.points] == ["de", "a", "be", "abd", "cd", "ace", "bc", "abcde"]
    assert d.points[0].assignment == {"f.a": 0, "f.b": 0, "f.c": 0, "f.d": 1, "f.e": 1}
    assert d.defining_relation == ("ABD", "ACE", "BCDE")
    assert d.resolution == 3
    assert d.aliases == {"A": ("BD", "CE", "ABCDE"), "B": ("AD", "CDE", "ABCE"),
                         "C": ("AE", "BDE", "ABCD"), "D": ("AB", "BCE", "ACDE"),
                         "E": ("AC", "BCD", "ABDE")}
    assert d.comparisons[0].note == "A: mean(high) - mean(low); aliased with BD, CE, ABCDE"
    assert d.comparisons[3].weights == {"de": 0.25, "a": -0.25, "be": -0.25, "abd": 0.25,
                                        "cd": 0.25, "ace": -0.25, "bc": -0.25, "abcde": 0.25}
    # the same fraction from the standard table (p: 2)
    t = parse_design({"type": "fractional_factorial", "factors": {c: [0, 1] for c in "abcde"}, "p": 2}, "t")
    assert [p.name for p in t.points] == [p.name for p in d.points]
    assert defining_relation(("D=ABC",)) == ("ABCD",)


@pytest.mark.parametrize("design, msg", [
    ({"type": "anova"}, "design.type: unknown design 'anova'"),
    ({"type": "loco"}, "design.components: required"),
    ({"type": "loco", "components": {"x": {"a": 0}}, "p": 1}, "design.p: only applies"),
    ({"type": "full_factorial", "factors": {"a": [0, 1, 2]}}, "exactly [low, high]"),
    ({"type": "fractional_factorial", "factors": {c: [0, 1] for c in "abcd"}, "generators": ["D=AE"]},
     "generators ['D=AE'] must define"),
    ({"type": "fractional_factorial", "factors": {c: [0, 1] for c in "abcd"}, "p": 3}, "design.p:"),
])
def test_bad_designs_name_the_key(design, msg):
    with pytest.raises(SearchSpaceError, match="t.yaml: "):
        _space(design)
    with pytest.raises(SearchSpaceError) as e:
        _space(design)
    assert msg in str(e.value)


def test_p1_loco_ships_validates_and_round_trips(tmp_path):
    from vldistill.search_spaces import validate_search_space
    from vldistill.trainers.config import load_train_config, to_dict

    space = load_search_space("p1_loco")
    assert [p.name for p in space.design.points] == [
        "base", "no_mse", "no_im_cst", "no_vlprox", "no_cap", "no_descriptors"]
    assert space.design.point("no_descriptors").assignment == {
        "distill.weights.mse": 1.0, "distill.text.source": "classname"}
    assert space.racing.min == 2 and space.racing.max == 8 and space.trial_count() == 48
    assert [c.name for c in space_comparisons(space)] == ["mse", "im_cst", "vlprox", "cap", "descriptors"]
    validate_search_space(space, to_dict(load_train_config(list(space.overrides))))
    again = search_space_from_dict(yaml.safe_load(yaml.safe_dump(space.to_dict(), sort_keys=False)))
    assert again == space


def test_design_points_are_checked_before_launch():
    from vldistill.search_spaces import validate_search_space
    from vldistill.trainers.config import load_train_config, to_dict

    base = to_dict(load_train_config([]))
    bad = _space({"type": "loco", "components": {"x": {"optim.epochs": "ten"}}})
    with pytest.raises(SearchSpaceError, match="design point 'no_x' gives an invalid config.*epochs"):
        validate_search_space(bad, base)
    typo = _space({"type": "loco", "components": {"x": {"distill.weightz.mse": 0.0}}})
    with pytest.raises(SearchSpaceError, match="unknown config path 'distill.weightz.mse'"):
        validate_search_space(typo, base)


def test_grid_comparisons_and_racing_rules():
    grid = {"name": "g", "metric": "novel_acc", "mode": "max", "sampler": "grid",
            "params": {"a.x": {"grid": [0.0, 1.0], "baseline": 0.0},
                       "a.y": {"grid": [0.0, 1.0, 2.0], "baseline": 0.0}}}
    space = search_space_from_dict({**grid, "seeds": {"min": 2, "max": 4}}, "g.yaml")
    assert [p.name for p in space_points(space)][:2] == ["x=0.0,y=0.0", "x=0.0,y=1.0"]
    # not all two-level: every configuration against the all-baseline one
    assert [c.name for c in space_comparisons(space)] == [
        "x=0.0,y=1.0", "x=0.0,y=2.0", "x=1.0,y=0.0", "x=1.0,y=1.0", "x=1.0,y=2.0"]
    assert space.seeds == (0, 1, 2, 3) and space.trial_count() == 24
    with pytest.raises(SearchSpaceError, match="g.yaml: seeds: racing needs a finite space"):
        search_space_from_dict({**grid, "sampler": "tpe", "num_samples": 4, "seeds": {"max": 4}}, "g.yaml")
    with pytest.raises(SearchSpaceError, match="g.yaml: seeds.min: must be an integer >= 2"):
        search_space_from_dict({**grid, "seeds": {"min": 1}}, "g.yaml")
    assert space.racing.futility == 0.1  # on by default
    assert search_space_from_dict({**grid, "seeds": {"max": 4, "futility": 0}}, "g.yaml").racing.futility == 0.0
    with pytest.raises(SearchSpaceError, match=r"g.yaml: seeds.futility: must be a number in \[0, 1\)"):
        search_space_from_dict({**grid, "seeds": {"max": 4, "futility": 1.5}}, "g.yaml")
    assert space.racing.variance == "pooled" and space.racing.to_dict()["variance"] == "pooled"
    paired = search_space_from_dict({**grid, "seeds": {"max": 4, "variance": "paired"}}, "g.yaml")
    assert paired.racing.variance == "paired"
    with pytest.raises(SearchSpaceError, match=r"g.yaml: seeds.variance: must be pooled .* or paired .*got 'pool'"):
        search_space_from_dict({**grid, "seeds": {"max": 4, "variance": "pool"}}, "g.yaml")
    nobase = {**grid, "params": {"a.x": {"grid": [0.0, 1.0]}}, "seeds": {"max": 4}}
    with pytest.raises(SearchSpaceError, match="racing needs comparisons"):
        search_space_from_dict(nobase, "g.yaml")
