"""The ``vldistill`` command: ``train`` writes its results; config errors exit 2 naming the
key, before anything is written."""

from __future__ import annotations

import json

import pytest

from vldistill.platform.cli import main
from vldistill.trainers.loop import CKPT_NAME

ACCS = ("base_acc", "novel_acc", "novel_acc/compositional", "novel_acc/semantic", "hmean",
        "shift_acc", "shift_acc/sketch", "shift_acc/painting", "shift_acc/noisy")


def test_cli_exits_2_naming_the_key_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"out_dir={out}", "optim.epochs=zero"]) == 2
    err = capsys.readouterr().err
    assert "optim.epochs" in err
    assert not out.exists()


def test_cli_unknown_group_option_lists_the_options(capsys):
    assert main(["train", "distill=nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "cls_mse" in err


def test_cli_unknown_loss_is_named_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"out_dir={out}", "+distill.weights.kd=1.0"]) == 2
    err = capsys.readouterr().err
    assert "distill.weights.kd" in err and "vlprox" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def smoke_run(smoke_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert main(["train", *smoke_overrides, f"out_dir={out}"]) == 0
    return out


def test_train_cli_writes_metrics_and_resolved_config(smoke_run):
    m = json.loads((smoke_run / "metrics.json").read_text())
    for key in ACCS:
        assert 0.0 <= m[key] <= 1.0, key
        assert 0.0 <= m[f"teacher/{key}"] <= 1.0, key
    assert m["student_params"] > 1e5 and m["student_latency_ms"] > 0
    assert m["n/base"] == 18 * 8 and m["n/novel"] == 18 * 16
    assert m["floor/colour/base"] == pytest.approx(5 / 18)  # 18 base classes, 5 colours
    assert m["shift_acc"] == pytest.approx(sum(m[f"shift_acc/{d}"] for d in ("sketch", "painting", "noisy")) / 3)
    import yaml
    cfg = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert cfg["optim"]["epochs"] == 2 and cfg["out_dir"] == str(smoke_run)
    rows = [json.loads(line) for line in (smoke_run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (smoke_run / "checkpoints" / CKPT_NAME).is_file()
