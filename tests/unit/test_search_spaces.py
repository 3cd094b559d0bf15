"""Search spaces: shipped YAMLs load and validate, errors name file and key, Optuna bridge."""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vldistill.search_spaces import (SearchSpace, SearchSpaceError, decode_params, define_by_run,
                                     flatten, get_dotted, grid_points, grid_sampler,
                                     list_search_spaces, load_search_space,
                                     search_space_from_dict, set_dotted, unflatten,
                                     validate_search_space)

SHIPPED = list_search_spaces()


@pytest.fixture(scope="module")
def compose():
    """Composed, typed-and-back default config for a list of overrides (memoised)."""
    from vldistill.trainers.config import compose_config
    from vldistill.trainers.config import from_dict, to_dict

    cache: dict[tuple, dict] = {}

    def _compose(overrides=()) -> dict:
        key = tuple(overrides)
        if key not in cache:
            cache[key] = to_dict(from_dict(compose_config(list(overrides))))
        return copy.deepcopy(cache[key])

    return _compose


def _minimal(**changes) -> dict:
    data = {
        "name": "t", "metric": "novel_acc", "mode": "max", "sampler": "random",
        "num_samples": 4, "seeds": [0],
        "params": {"distill.weights.mse": {"choice": [0.0, 1.0], "baseline": 0.0}},
    }
    data.update(changes)
    return data


def _write(tmp_path: Path, data: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----- shipped spaces ------------------------------------------------------------------------


def test_shipped_spaces_are_the_documented_ones():
    assert {"smoke", "default", "p1_losses", "students", "attribute_sources", "prompt_diversification",
            "dime_fm", "distillvlm"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads_and_validates_against_composed_config(name, compose):
    space = load_search_space(name)
    assert space.name == name and space.source.endswith(f"{name}.yaml")
    validate_search_space(space, compose(space.overrides))
    if name == "distillvlm":  # its token losses need the ViT pair its overrides select
        with pytest.raises(SearchSpaceError, match=r"value 5000.0: student.name='resnet18'.*need a ViT student"):
            validate_search_space(space, compose())
    else:
        validate_search_space(space, compose())  # the plain default config works too
    assert space.trial_count() >= len(space.seeds)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_round_trips_through_yaml(name, tmp_path):
    space = load_search_space(name)
    path = _write(tmp_path, space.to_dict(), "search_space.yaml")
    again = load_search_space(str(path))
    assert again == space
    assert again.to_dict() == space.to_dict()
    assert again.source != space.source  # source is where it came from, not part of equality


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_yaml_starts_with_a_comment(name):
    text = (Path(load_search_space(name).source)).read_text()
    assert text.startswith("# Question")


def test_shipped_space_details():
    smoke = load_search_space("smoke")
    assert smoke.overrides == ("experiment=smoke",) and smoke.trial_count() == 2
    default = load_search_space("default")
    assert default.sampler == "grid" and default.trial_count() == 16  # at most: raced, 2-4 seeds
    assert (default.racing.min, default.racing.max, default.racing.variance) == (2, 4, "pooled")
    p1 = load_search_space("p1_losses")
    assert p1.scheduler.type == "asha" and p1.scheduler.max_t == 20
    assert p1.params["distill.vlprox.k"].when == {"distill.weights.vlprox": 1.0}
    students = load_search_space("students")
    assert students.multi_objective and students.modes == ("max", "min")
    assert students.params["student.name"].baseline == "resnet18"


def test_trial_count_for_grid_is_capped_by_grid_size():
    space = search_space_from_dict(_minimal(sampler="grid", num_samples=10, seeds=[0, 1, 2]))
    assert space.grid_size() == 2 and space.trial_count() == 6
    data = _minimal(sampler="grid")
    del data["num_samples"]
    assert search_space_from_dict(data).num_samples == 2  # grid default: the whole grid


def test_loads_by_path_and_unknown_name_lists_shipped(tmp_path):
    path = _write(tmp_path, _minimal(name="mine"))
    assert load_search_space(str(path)).name == "mine"
    with pytest.raises(SearchSpaceError, match="shipped: .*smoke"):
        load_search_space("no_such_space")
    with pytest.raises(SearchSpaceError, match="not found"):
        load_search_space(str(tmp_path / "missing.yaml"))


def test_name_defaults_to_file_stem(tmp_path):
    data = _minimal()
    del data["name"]
    assert load_search_space(str(_write(tmp_path, data, "my_space.yaml"))).name == "my_space"


def test_float_bounds_written_without_dot_are_read_as_numbers(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("metric: novel_acc\nmode: max\nnum_samples: 2\n"
                    "params:\n  optim.lr: {loguniform: [1e-4, 1e-2]}\n")
    p = load_search_space(str(path)).params["optim.lr"]
    assert (p.low, p.high) == (1e-4, 1e-2)


# ----- structural errors: each names the file and the key ------------------------------------

P = "distill.weights.mse"
STRUCTURAL_ERRORS = {
    "unknown top-level key": (dict(metrics="novel_acc"), ["metrics", "valid: name"]),
    "unknown spec kind": (dict(params={P: {"normal": [0, 1]}}), [P, "normal", "choice"]),
    "two kinds": (dict(params={P: {"choice": [0.0], "uniform": [0, 1]}}), [P, "several kinds"]),
    "spec not a mapping": (dict(params={P: [0.0, 1.0]}), [P, "mapping"]),
    "empty choice": (dict(params={P: {"choice": []}}), [P, "non-empty"]),
    "duplicate choice": (dict(params={P: {"choice": [1.0, 1.0]}}), [P, "twice"]),
    "low > high": (dict(params={"optim.lr": {"uniform": [0.1, 0.01]}}), ["optim.lr", "> high"]),
    "loguniform low <= 0": (dict(params={"optim.lr": {"loguniform": [0.0, 0.1]}}),
                            ["optim.lr", "low > 0"]),
    "int bounds not ints": (dict(params={"optim.epochs": {"int": [1.5, 4]}}),
                            ["optim.epochs", "integers"]),
    "bounds not a pair": (dict(params={"optim.lr": {"uniform": [0.1]}}),
                          ["optim.lr", "[low, high]"]),
    "baseline not a choice": (dict(params={P: {"choice": [0.0, 1.0], "baseline": 0.5}}),
                              [P, "baseline 0.5", "not among"]),
    "baseline outside bounds": (dict(params={"optim.lr": {"uniform": [0.1, 0.2], "baseline": 1.0}}),
                                ["optim.lr", "outside"]),
    "unknown metric": (dict(metric="accuracy"), ["metric", "accuracy", "novel_acc", "shift_acc/"]),
    "unknown mode": (dict(mode="maximize"), ["mode", "maximize", "max, min"]),
    "mode length": (dict(metric=["novel_acc", "base_acc"], mode=["max"]), ["mode", "1 modes"]),
    "unknown sampler": (dict(sampler="cmaes"), ["sampler", "cmaes", "tpe, random, grid"]),
    "grid with continuous": (dict(sampler="grid", params={"optim.lr": {"uniform": [0.1, 0.2]}}),
                             ["optim.lr", "grid"]),
    "unknown scheduler": (dict(scheduler={"type": "hyperband"}), ["scheduler.type", "hyperband",
                                                                   "asha, none"]),
    "asha with several metrics": (dict(metric=["novel_acc", "loss"], mode=["max", "min"],
                                       scheduler={"type": "asha"}), ["scheduler", "one metric"]),
    "asha grace > max_t": (dict(scheduler={"type": "asha", "max_t": 2, "grace_period": 4}),
                           ["scheduler.grace_period"]),
    "scheduler unknown key": (dict(scheduler={"type": "asha", "patience": 3}),
                              ["scheduler.patience", "grace_period"]),
    "seeds empty": (dict(seeds=[]), ["seeds", "non-empty"]),
    "seeds not ints": (dict(seeds=[0, "one"]), ["seeds", "'one'"]),
    "seeds duplicated": (dict(seeds=[0, 1, 0]), ["seeds", "twice"]),
    "num_samples < 1": (dict(num_samples=0), ["num_samples", ">= 1"]),
    "num_samples missing": (dict(num_samples=None), ["num_samples", "required"]),
    "negative cpu": (dict(resources={"cpu": -1}), ["resources.cpu", ">= 0"]),
    "negative gpu": (dict(resources={"gpu": -0.5}), ["resources.gpu", ">= 0"]),
    "workers < 1": (dict(resources={"workers": 0}), ["resources.workers", ">= 1"]),
    "resources unknown key": (dict(resources={"ram": 4}), ["resources.ram", "cpu, gpu, memory"]),
    "resources memory <= 0": (dict(resources={"memory": 0}), ["resources.memory", "> 0"]),
    "params empty": (dict(params={}), ["params", "at least one"]),
    "missing metric": (dict(metric=None), ["metric"]),
    "override not key=value": (dict(overrides=["smoke"]), ["overrides", "'smoke'"]),
    "when names a later param": (dict(params={
        "distill.vlprox.k": {"choice": [1, 10], "when": {"distill.weights.vlprox": 1.0}},
        "distill.weights.vlprox": {"choice": [0.0, 1.0]}}), ["distill.vlprox.k.when", "after"]),
    "when value not a choice": (dict(params={
        "distill.weights.vlprox": {"choice": [0.0, 1.0]},
        "distill.vlprox.k": {"choice": [1, 10], "when": {"distill.weights.vlprox": 0.5}}}),
        ["distill.vlprox.k.when", "0.5", "not among"]),
    "when on continuous param": (dict(params={
        "optim.lr": {"uniform": [0.1, 0.2]},
        "distill.vlprox.k": {"choice": [1, 10], "when": {"optim.lr": 0.1}}}),
        ["distill.vlprox.k.when", "uniform"]),
}


@pytest.mark.parametrize("case", list(STRUCTURAL_ERRORS))
def test_structural_error_names_file_and_key(case, tmp_path):
    changes, fragments = STRUCTURAL_ERRORS[case]
    data = _minimal(**changes)
    for k in [k for k, v in changes.items() if v is None]:
        del data[k]
    path = _write(tmp_path, data, "bad_space.yaml")
    with pytest.raises(SearchSpaceError) as info:
        load_search_space(str(path))
    msg = str(info.value)
    assert "bad_space.yaml" in msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


@pytest.mark.parametrize("metric", ["shift_acc/sketch", "novel_acc/compositional", "M_rel",
                                    "student_flops", "fewshot_novel_acc", "loss", "novel_acc_5shot",
                                    "M_neigh/base", "synthetic/diversity"])
def test_metric_patterns_are_accepted(metric):
    assert search_space_from_dict(_minimal(metric=metric, mode="min")).metrics == (metric,)


def test_single_mode_applies_to_every_metric():
    space = search_space_from_dict(_minimal(metric=["novel_acc", "base_acc"], mode="max"))
    assert space.modes == ("max", "max") and space.multi_objective


# ----- validation against the typed config ---------------------------------------------------

VALIDATION_ERRORS = {
    "unknown path": ({"distill.weight.mse": {"choice": [0.0, 1.0]}},
                     ["distill.weight.mse", "weights", "vlprox"]),
    "path below a leaf": ({"optim.lr.max": {"choice": [0.1]}}, ["optim.lr.max", "no sub-key"]),
    "config group, not a value": ({"distill.vlprox": {"choice": [{"k": 1}]}},
                                  ["distill.vlprox", "distill.vlprox.k"]),
    "unknown loss": ({"distill.weights.msee": {"choice": [0.0, 1.0]}},
                     ["distill.weights.msee", "known losses", "im_cst"]),
    "wrong value type": ({"optim.epochs": {"choice": [2, 2.5]}},
                         ["optim.epochs", "2.5", "integer"]),
    "invalid value": ({"optim.lr": {"uniform": [-1.0, 0.1]}}, ["optim.lr", "-1.0", "> 0"]),
    "float bounds for an int field": ({"optim.epochs": {"uniform": [1, 4]}},
                                      ["optim.epochs", "1.0", "integer"]),
    "unknown student": ({"student.name": {"choice": ["resnet18", "resnet1888"]}},
                        ["student.name", "resnet1888"]),
    "unknown teacher": ({"teacher.name": {"choice": ["embedded", "ViT-Q-99"]}},
                        ["teacher.name", "ViT-Q-99", "open_clip"]),
    "reserved seed": ({"seed": {"choice": [0, 1]}}, ["params.seed", "seeds"]),
}


def test_invalid_combination_of_valid_values_is_reported(compose):
    # Each value alone is fine on the cls+im_cst base; both weights at 0 together are not.
    space = search_space_from_dict(_minimal(params={
        "distill.weights.cls": {"choice": [0.0, 1.0]},
        "distill.weights.im_cst": {"choice": [0.0, 1.0]}}), source="/x/bad_space.yaml")
    pattern = (r"^/x/bad_space.yaml: combination "
               r"params.distill.weights.cls=0.0, params.distill.weights.im_cst=0.0: .*weight > 0"
               r".*checked: all 4 combinations")
    with pytest.raises(SearchSpaceError, match=pattern):
        validate_search_space(space, compose(["distill=cls_im_cst"]))


def test_conditions_exclude_invalid_combinations(compose):
    space = search_space_from_dict(_minimal(params={
        "distill.weights.im_cst": {"choice": [0.0, 1.0]},
        "distill.weights.cls": {"choice": [0.0, 1.0], "when": {"distill.weights.im_cst": 1.0}}}))
    validate_search_space(space, compose(["distill=cls_im_cst"]))


@pytest.mark.parametrize("case", list(VALIDATION_ERRORS))
def test_validation_error_names_file_key_and_value(case, compose):
    params, fragments = VALIDATION_ERRORS[case]
    space = search_space_from_dict(_minimal(params=params), source="/x/bad_space.yaml")
    with pytest.raises(SearchSpaceError) as info:
        validate_search_space(space, compose())
    msg = str(info.value)
    assert msg.startswith("/x/bad_space.yaml: ")
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


def test_validation_accepts_dict_subkeys_and_conditional_values(compose):
    space = search_space_from_dict(_minimal(params={
        "student.kwargs.drop_rate": {"uniform": [0.0, 0.2]},
        "distill.weights.vlprox": {"choice": [0.0, 1.0]},
        "distill.vlprox.k": {"choice": [1, 10], "when": {"distill.weights.vlprox": 1.0}},
        "student.mean": {"choice": [None, [0.5, 0.5, 0.5]]},
    }))
    validate_search_space(space, compose())


def test_invalid_base_config_is_reported(compose):
    base = compose()
    base["optim"]["epochs"] = 0
    space = search_space_from_dict(_minimal(), source="s.yaml")
    with pytest.raises(SearchSpaceError, match="s.yaml: the base config .*optim.epochs"):
        validate_search_space(space, base)


# ----- Optuna bridge -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def optuna():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def test_define_by_run_suggests_in_bounds_and_respects_conditions(optuna):
    space = load_search_space("p1_losses")
    fn = define_by_run(space)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    seen_on = seen_off = 0
    for i in range(50):
        trial = study.ask()
        assert fn(trial) == {}
        params = trial.params
        assert 3.0e-4 <= params["optim.lr"] <= 1.0e-2 and params["optim.lr"] > 0
        for loss in ("mse", "im_cst", "vlprox"):
            assert params[f"distill.weights.{loss}"] in (0.0, 1.0)
        if params["distill.weights.vlprox"] == 1.0:
            seen_on += 1
            assert params["distill.vlprox.k"] in (1, 10, 256)
            assert params["distill.vlprox.filter"] in (True, False)
        else:
            seen_off += 1
            assert "distill.vlprox.k" not in params and "distill.vlprox.filter" not in params
        study.tell(trial, float(i))
    assert seen_on and seen_off


def test_define_by_run_int_and_uniform_kinds(optuna):
    space = search_space_from_dict(_minimal(params={
        "optim.epochs": {"int": [2, 5]}, "augment.scale_min": {"uniform": [0.5, 0.9]}}))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    fn = define_by_run(space)
    for _ in range(20):
        trial = study.ask()
        fn(trial)
        epochs = trial.params["optim.epochs"]
        assert isinstance(epochs, int) and 2 <= epochs <= 5
        assert 0.5 <= trial.params["augment.scale_min"] <= 0.9
        study.tell(trial, trial.params["augment.scale_min"])


def test_list_choices_round_trip_through_optuna(optuna):
    choices = [None, [0.5, 0.5, 0.5], [0.4, 0.4, 0.4]]
    space = search_space_from_dict(_minimal(params={"student.mean": {"choice": choices}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    got = []
    for _ in range(15):
        trial = study.ask()
        define_by_run(space)(trial)
        assert isinstance(trial.params["student.mean"], str)  # Optuna holds the JSON text
        got.append(decode_params(space, trial.params)["student.mean"])
        study.tell(trial, 0.0)
    assert all(g in choices for g in got) and len({repr(g) for g in got}) == 3


def test_grid_sampler_enumerates_exactly_the_product(optuna):
    space = search_space_from_dict(_minimal(sampler="grid", params={
        "distill.weights.im_cst": {"grid": [0.0, 1.0]},
        "distill.vlprox.k": {"choice": [1, 10, 256]},
        "student.mean": {"choice": [None, [0.5, 0.5, 0.5]]}}))
    points = grid_points(space)
    study = optuna.create_study(sampler=grid_sampler(space))
    fn = define_by_run(space)
    seen = []
    for _ in range(space.grid_size()):
        trial = study.ask()
        fn(trial)
        seen.append(tuple(trial.params[k] for k in points))
        study.tell(trial, 0.0)
    assert sorted(map(repr, seen)) == sorted(map(repr, itertools.product(*points.values())))
    assert len(set(seen)) == 12
    assert study.sampler.is_exhausted(study)  # and the last tell above did not raise


def test_plain_grid_sampler_raises_on_last_tell_outside_optimize(optuna):
    """Why grid_sampler exists: optuna's GridSampler calls study.stop() in ask-and-tell."""
    space = search_space_from_dict(_minimal(sampler="grid"))
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid_points(space)))
    first = study.ask()
    define_by_run(space)(first)
    study.tell(first, 0.0)
    last = study.ask()
    define_by_run(space)(last)
    with pytest.raises(RuntimeError, match="Study.stop"):
        study.tell(last, 0.0)


def test_grid_points_rejects_continuous_params():
    space = search_space_from_dict(_minimal(params={"optim.lr": {"uniform": [0.1, 0.2]}}),
                                   source="s.yaml")
    with pytest.raises(SearchSpaceError, match="s.yaml: params.optim.lr: a uniform"):
        grid_points(space)


# ----- dotted helpers and imports ------------------------------------------------------------


def test_flatten_unflatten_round_trip(compose):
    cfg = compose()
    flat = flatten(cfg)
    assert flat["distill.weights.cls"] == 1.0 and flat["student.kwargs"] == {}
    assert flat["data.shift_domains"] is None
    assert unflatten(flat) == cfg
    assert flatten({"a": [1, {"b": 2}]}) == {"a": [1, {"b": 2}]}  # lists are leaves


def test_unflatten_rejects_conflicting_keys():
    with pytest.raises(ValueError, match="a.b"):
        unflatten({"a": 1, "a.b": 2})
    with pytest.raises(ValueError, match="conflicting"):
        unflatten({"a.b": 2, "a": 1})


def test_set_dotted_creates_intermediate_dicts_and_get_dotted_reads_back():
    d: dict = {"x": 1}
    set_dotted(d, "a.b.c", 3)
    assert d == {"x": 1, "a": {"b": {"c": 3}}} and get_dotted(d, "a.b.c") == 3
    with pytest.raises(KeyError, match="a.b has no key 'z'"):
        get_dotted(d, "a.b.z")
    with pytest.raises(ValueError, match="x holds 1"):
        set_dotted(d, "x.y", 2)


def test_search_space_is_frozen():
    space = search_space_from_dict(_minimal())
    assert isinstance(space, SearchSpace)
    with pytest.raises(AttributeError):
        space.name = "other"  # type: ignore[misc]


def test_importing_search_spaces_does_not_import_ray():
    code = ("import sys, vldistill.search_spaces as s; s.load_search_space('p1_losses'); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
