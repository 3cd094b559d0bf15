"""Bad config: exit code 2, one message naming the key or file and the valid options, before
Ray starts, nothing written -- for ``vldistill train`` and ``vldistill sweep``.

Most cases run the CLI's ``main`` in this process with the sweep's Ray entry points replaced
by a tripwire (a config error that slipped through would reach them: the test then fails with
"Ray would start"); a few run the real command in a subprocess to check the exit code, the
stderr and that no local Ray instance is started.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from reliability_helpers import error_lines
from vldistill.platform.cli import main

class _Evil:
    """Unpickling this calls ``open(marker, "w")``: proof that pickled code would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def evil_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "pickled-code-ran"
    path = folder / "teacher.pt"
    torch.save({"state_dict": {"visual.proj": _Evil(marker)}}, path)  # pickle inside torch's zip
    assert not marker.exists()
    return path, marker


@pytest.fixture
def no_ray(monkeypatch):
    """Fail loudly if a sweep gets as far as starting Ray."""
    import vldistill.platform.sweep as sweep

    def tripwire(*a, **k):
        raise AssertionError("Ray would start")

    monkeypatch.setattr(sweep, "_init_ray", tripwire)
    monkeypatch.setattr(sweep, "_run_tune", tripwire)


def _main(capsys, argv: list[str]) -> tuple[object, str]:
    try:
        rc = main(argv)
    except BaseException as e:  # noqa: BLE001  a crash (or the tripwire) breaks the contract
        rc = f"crashed with {type(e).__name__}: {e}"
    return rc, capsys.readouterr().err


def _assert_refused(rc, err: str, out: Path, expected: list[str]) -> str:
    assert rc == 2, f"exit {rc!r}: {err[-2000:]}"
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    message = "\n".join(err.splitlines()[err.splitlines().index(lines[0]):])  # Hydra's run on
    for text in expected:
        assert text in message, f"{text!r} not in: {message}"
    assert not out.exists(), f"{out} was written"
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    return message


# ----- overrides: the same mistakes on `vldistill train` and `vldistill sweep` --------------

OVERRIDE_CASES = [
    pytest.param(["+optim.lrr=0.1"], ["optim.lrr", "valid keys under 'optim'", "lr", "epochs"],
                 id="unknown_key"),
    pytest.param(["optim.lrr=0.1"], ["optim.lrr", "valid keys", "epochs"], id="unknown_key_no_plus"),
    pytest.param(["optim.epochs=ten"], ["optim.epochs", "expected an integer", "'ten'"], id="wrong_type"),
    pytest.param(["distill=nope"], ["distill", "nope", "cls_mse", "cls_im_cst"], id="unknown_group_option"),
    pytest.param(["+distill.weights.kd=1.0"], ["distill.weights.kd", "unknown loss", "vlprox", "mse"],
                 id="unknown_loss"),
    pytest.param(["student.name=resnet_nope"], ["student.name", "resnet_nope", "close matches", "resnet50"],
                 id="unknown_student"),
    pytest.param(["teacher=open_clip", "teacher.name=ViT-Nope"],
                 ["teacher.name", "ViT-Nope", "'embedded'", "open_clip.list_models()"], id="unknown_teacher"),
    pytest.param(["distill.weights.cls=-1.0"], ["distill.weights.cls", "must be >= 0", "-1.0"],
                 id="negative_loss_weight"),
    pytest.param(["teacher=open_clip", "teacher.name=vldistill-vit-tiny",
                  "teacher.pretrained=/nonexistent.pt"],
                 ["teacher.pretrained", "/nonexistent.pt", "not found"], id="missing_teacher_checkpoint"),
    pytest.param(["distill.cls.tau=0"], ["distill.cls.tau", "> 0"], id="zero_temperature"),
    pytest.param(["data.world.n_compositional=11"], ["data.world.n_compositional", "[0, 10]", "11"],
                 id="world_out_of_range"),
    pytest.param(["data.world.semantic_shape=hexagon"], ["data.world.semantic_shape", "'hexagon'", "star"],
                 id="world_unknown_shape"),
    pytest.param(["data.world.train_domain=cartoon"], ["data.world.train_domain", "'cartoon'", "photo"],
                 id="world_unknown_domain"),
]


@pytest.mark.parametrize("overrides,expected", OVERRIDE_CASES)
def test_train_refuses_bad_override(overrides, expected, smoke_overrides, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = _main(capsys, ["train", *smoke_overrides, f"out_dir={out}", *overrides])
    _assert_refused(rc, err, out, expected)


@pytest.mark.parametrize("overrides,expected", OVERRIDE_CASES)
def test_sweep_refuses_bad_override(overrides, expected, tmp_path, capsys, no_ray):
    out = tmp_path / "sweep"
    rc, err = _main(capsys, ["sweep", "search_space=smoke", f"out_dir={out}", "progress=false",
                             *overrides, "--no-wandb"])
    _assert_refused(rc, err, out, expected)


def test_pickled_teacher_checkpoint_is_refused_and_never_unpickled(evil_checkpoint, smoke_overrides,
                                                                   tmp_path, capsys, no_ray):
    path, marker = evil_checkpoint
    teacher = ["teacher=open_clip", "teacher.name=vldistill-vit-tiny", f"teacher.pretrained={path}"]
    for argv, out in ((["train", *smoke_overrides, f"out_dir={tmp_path / 'run'}"], tmp_path / "run"),
                      (["sweep", "search_space=smoke", f"out_dir={tmp_path / 'sweep'}"], tmp_path / "sweep")):
        rc, err = _main(capsys, [*argv, *teacher, *(["--no-wandb"] if argv[0] == "sweep" else [])])
        _assert_refused(rc, err, out, ["teacher.pretrained", str(path), "pickled code",
                                       "weights_only=True", "state_dict"])
    assert not marker.exists(), "the checkpoint's pickled code ran"


# ----- search spaces ------------------------------------------------------------------------

SPACE_HEAD = """
name: rel_bad
metric: {metric}
mode: max
sampler: random
num_samples: 2
seeds: [0]
overrides: [experiment=smoke]
params:
  {param}
"""

SPACE_CASES = [
    pytest.param("optim.lrr: {choice: [0.1, 0.2]}",
                 ["params.optim.lrr", "unknown config path", "valid keys under optim", "lr", "epochs"],
                 id="unknown_dotted_path"),
    pytest.param("optim.epochs: {choice: [2, ten]}",
                 ["params.optim.epochs", "'ten'", "expected an integer"], id="wrong_type"),
    pytest.param("distill.weights.mse: {choice: []}",
                 ["params.distill.weights.mse", "non-empty list"], id="empty_choice_list"),
    pytest.param("optim.lr: {uniform: [0.5, 0.1]}",
                 ["params.optim.lr", "low 0.5 > high 0.1"], id="low_greater_than_high"),
    pytest.param("optim.lr: {normal: [0.0, 1.0]}",
                 ["params.optim.lr", "unknown spec key 'normal'", "choice", "loguniform"], id="unknown_kind"),
    pytest.param("distill.weights.kd: {choice: [0.0, 1.0]}",
                 ["params.distill.weights.kd", "unknown loss 'kd'", "known losses", "vlprox"],
                 id="unknown_loss"),
    pytest.param("student.name: {choice: [resnet18, resnet_nope]}",
                 ["params.student.name", "resnet_nope", "close matches"], id="unknown_student"),
    pytest.param("teacher.name: {choice: [embedded, ViT-Nope]}",
                 ["params.teacher.name", "ViT-Nope", "'embedded'"], id="unknown_teacher"),
    pytest.param("distill.weights.mse: {choice: [-1.0, 1.0]}",
                 ["params.distill.weights.mse", "-1.0", "must be >= 0"], id="negative_loss_weight"),
    pytest.param("distill.weights.cls: {choice: [0.0]}",
                 ["params.distill.weights.cls", "at least one loss needs a weight > 0"],
                 id="every_loss_weight_zero"),
    pytest.param("seed: {choice: [0, 1]}", ["params.seed", "cannot be swept", "seeds"], id="reserved_key"),
    pytest.param("distill.cls.tau: {choice: [0.07, 0.0]}", ["params.distill.cls.tau", "> 0"],
                 id="zero_temperature"),
]


@pytest.mark.parametrize("param,expected", SPACE_CASES)
def test_sweep_refuses_bad_search_space(param, expected, tmp_path, capsys, no_ray):
    space = tmp_path / "bad_space.yaml"
    space.write_text(SPACE_HEAD.format(metric="novel_acc", param=param))
    out = tmp_path / "sweep"
    rc, err = _main(capsys, ["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"])
    _assert_refused(rc, err, out, [str(space), *expected])


def test_sweep_refuses_unknown_metric(tmp_path, capsys, no_ray):
    space = tmp_path / "bad_metric.yaml"
    space.write_text(SPACE_HEAD.format(metric="novel_accuracy", param="optim.lr: {choice: [0.001]}"))
    out = tmp_path / "sweep"
    rc, err = _main(capsys, ["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"])
    _assert_refused(rc, err, out, [str(space), "metric", "novel_accuracy", "known:", "novel_acc"])


def test_sweep_refuses_a_search_space_with_a_repeated_key(tmp_path, capsys, no_ray):
    """``metric:`` twice once launched a whole sweep on the last one, silently."""
    space = tmp_path / "twice.yaml"
    space.write_text(SPACE_HEAD.format(metric="novel_acc", param="optim.lr: {choice: [0.001]}")
                     + "metric: hmean\n")
    out = tmp_path / "sweep"
    rc, err = _main(capsys, ["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"])
    _assert_refused(rc, err, out, [str(space), "line 11", "repeated key 'metric'", "first on line 3"])


def test_sweep_refuses_a_repeated_key_inside_params(tmp_path, capsys, no_ray):
    space = tmp_path / "twice.yaml"
    space.write_text(SPACE_HEAD.format(metric="novel_acc", param="optim.lr: {choice: [0.001]}\n"
                                       "  optim.lr: {choice: [0.002]}"))
    out = tmp_path / "sweep"
    rc, err = _main(capsys, ["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"])
    _assert_refused(rc, err, out, [str(space), "line 11", "repeated key 'optim.lr'"])


def test_sweep_refuses_unknown_space_name_and_missing_file(tmp_path, capsys, no_ray):
    out = tmp_path / "sweep"
    rc, err = _main(capsys, ["sweep", "search_space=p1_lossez", f"out_dir={out}", "--no-wandb"])
    _assert_refused(rc, err, out, ["p1_lossez", "shipped:", "p1_losses", "smoke"])
    missing = tmp_path / "nowhere.yaml"
    rc, err = _main(capsys, ["sweep", f"search_space={missing}", f"out_dir={out}", "--no-wandb"])
    _assert_refused(rc, err, out, [str(missing), "not found"])


def test_resume_of_a_directory_that_is_not_a_sweep_is_refused(tmp_path, capsys, no_ray):
    empty = tmp_path / "not-a-sweep"
    empty.mkdir()
    rc, err = _main(capsys, ["sweep", "--resume", str(empty), "--no-wandb"])
    _assert_refused(rc, err, tmp_path / "absent", [str(empty), "search_space.yaml", "not a sweep directory"])
    assert list(empty.iterdir()) == [], "the resume wrote into a directory that is not a sweep"


ASHA_SPACE = """
name: rel_bad_asha
metric: novel_acc
mode: max
sampler: random
scheduler: {type: asha, max_t: 4, grace_period: 1, reduction_factor: 2}
num_samples: 2
seeds: [0]
overrides: [experiment=smoke, optim.epochs=4, eval.every=2]
params:
  optim.lr: {choice: [0.001, 0.002]}
"""


def test_sweep_refuses_asha_rungs_between_evaluations_before_writing(tmp_path, capsys, monkeypatch):
    import vldistill.platform.sweep as sweep

    def tripwire(*a, **k):
        raise AssertionError("Ray would start")

    monkeypatch.setattr(sweep, "_init_ray", tripwire)  # _run_tune itself runs: the check is in it
    space = tmp_path / "asha.yaml"
    space.write_text(ASHA_SPACE)
    out = tmp_path / "sweep"
    rc, err = _main(capsys, ["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"])
    _assert_refused(rc, err, out, ["eval.every=2", "grace_period"])


# ----- the real commands, in subprocesses ---------------------------------------------------


def _assert_cli_refused(proc, out: Path, expected: list[str]) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for text in expected:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"
    assert "local Ray instance" not in proc.stdout + proc.stderr
    assert not out.exists(), f"{out} was written"


def test_cli_sweep_with_bad_space_exits_2_without_starting_ray(cli, tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text(SPACE_HEAD.format(metric="novel_acc", param="optim.lrr: {choice: [0.1, 0.2]}"))
    out = tmp_path / "sweep"
    proc = cli(["sweep", f"search_space={space}", f"out_dir={out}"], timeout=300)
    _assert_cli_refused(proc, out, [str(space), "params.optim.lrr", "valid keys under optim"])


def test_cli_sweep_with_pickled_checkpoint_exits_2_without_starting_ray(cli, evil_checkpoint, tmp_path):
    path, marker = evil_checkpoint
    out = tmp_path / "sweep"
    proc = cli(["sweep", "search_space=smoke", f"out_dir={out}", "teacher=open_clip",
                         "teacher.name=vldistill-vit-tiny", f"teacher.pretrained={path}"], timeout=300)
    _assert_cli_refused(proc, out, ["teacher.pretrained", str(path), "weights_only=True"])
    assert not marker.exists()


def test_cli_train_with_missing_checkpoint_exits_2(cli, tmp_path):
    out = tmp_path / "run"
    proc = cli(["train", "experiment=smoke", f"out_dir={out}", "teacher=open_clip",
                         "teacher.name=vldistill-vit-tiny", "teacher.pretrained=/nonexistent.pt"],
                        timeout=300)
    _assert_cli_refused(proc, out, ["teacher.pretrained", "/nonexistent.pt", "not found"])


# ----- every point of a search space, before Ray starts --------------------------------------

POINT_HEAD = """
name: rel_points
metric: novel_acc
mode: max
sampler: grid
num_samples: 4
seeds: [0]
overrides: [experiment=smoke{overrides}]
params:
"""

# A swept value that the base config refuses, one rule per case: (params, extra overrides,
# what the one error must name: param, value, rule).
POINT_CASES = [
    pytest.param("  distill.weights.attn: {choice: [0.0, 1.0]}\n", "",
                 ["params.distill.weights.attn", "value 1.0", "student.name", "test_resnet", "ViT",
                  "distill.weights.attn > 0"], id="token_loss_with_cnn_student"),
    pytest.param("  distill.text.source: {choice: [classname, wikipedia]}\n", "",
                 ["params.distill.text.source", "value 'wikipedia'", "unknown attribute source",
                  "descriptions"], id="unknown_attribute_source"),
    pytest.param("  data.world.n_compositional: {choice: [7, 12]}\n", "",
                 ["params.data.world.n_compositional", "value 12", "must be in [0, 10]"],
                 id="world_out_of_range"),
    pytest.param("  data.world.semantic_colour: {choice: [magenta, purple]}\n", "",
                 ["params.data.world.semantic_colour", "value 'purple'", "must be one of", "magenta"],
                 id="world_unknown_colour"),
    pytest.param("  distill.labels: {choice: [true, false]}\n", "",
                 ["params.distill.labels", "value False", "label-free", "distill.weights.cls > 0"],
                 id="label_free_with_a_label_loss"),
    pytest.param("  distill.labels: {choice: [true, false]}\n  distill.weights.cls: {choice: [0.0, 1.0]}\n",
                 ", distill=cls_mse, distill.weights.cls=0.0",
                 ["combination", "params.distill.labels=False", "params.distill.weights.cls=1.0",
                  "label-free", "reads labels"], id="cross_field_between_two_swept_params"),
    pytest.param("  data.source: {choice: [world, folder]}\n", "",
                 ["params.data.source", "value 'folder'", "data.root", "required"], id="folder_without_root"),
]


@pytest.mark.parametrize("params,overrides,expected", POINT_CASES)
def test_sweep_refuses_a_swept_value_the_base_config_refuses(params, overrides, expected, tmp_path,
                                                             capsys, no_ray):
    space = tmp_path / "points.yaml"
    space.write_text(POINT_HEAD.format(overrides=overrides) + params)
    out = tmp_path / "sweep"
    rc, err = _main(capsys, ["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"])
    _assert_refused(rc, err, out, [str(space), *expected])


def test_sweep_reports_every_bad_point_at_once(tmp_path, capsys, no_ray):
    space = tmp_path / "many.yaml"
    space.write_text(POINT_HEAD.format(overrides="").replace("sampler: grid", "sampler: random") + (
        "  distill.text.source: {choice: [classname, wikipedia]}\n"
        "  data.world.n_compositional: {choice: [7, 12]}\n"
        "  distill.weights.attn: {choice: [0.0, 1.0]}\n"
        "  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\n"))
    out = tmp_path / "sweep"
    rc, err = _main(capsys, ["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"])
    message = _assert_refused(rc, err, out, [str(space), "3 problems found before launch",
                                             "all 16 combinations"])
    for text in ("params.distill.text.source: value 'wikipedia'", "params.data.world.n_compositional: value 12",
                 "params.distill.weights.attn: value 1.0"):
        assert text in message, f"{text!r} not in: {message}"


def test_a_large_space_is_checked_on_a_seeded_sample_and_says_so(tmp_path, capsys, no_ray, monkeypatch):
    import vldistill.search_spaces.validate as validate

    monkeypatch.setattr(validate, "MAX_POINTS", 6)  # 2 x 2 x 3 = 12 combinations > 6
    space = tmp_path / "sampled.yaml"
    space.write_text(POINT_HEAD.format(overrides=", distill=cls_mse, distill.weights.cls=0.0") + (
        "  distill.labels: {choice: [true, false]}\n"
        "  distill.weights.cls: {choice: [0.0, 1.0]}\n"
        "  optim.lr: {choice: [0.001, 0.002, 0.003]}\n"))
    out = tmp_path / "sweep"
    rc, err = _main(capsys, ["sweep", f"search_space={space}", f"out_dir={out}", "--no-wandb"])
    if rc == 0:  # the sample missed the bad combination: allowed, but then it said what it checked
        pytest.fail("the bad combination was not in the sample; pick another sampler_seed for the test")
    message = _assert_refused(rc, err, out, [str(space), "label-free"])
    assert "a seeded sample (sampler_seed 0) of 6 of the 12 combinations" in message, message
