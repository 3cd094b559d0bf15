"""``platform.assets._unwrap``: an error of ours raised inside Ray reaches the driver as
itself (named, exit 2), however Ray wrapped it; only Ray's own failures become AssetError."""

from __future__ import annotations

import pytest
import ray.exceptions

from vldistill.platform.assets import AssetError, _unwrap
from vldistill.trainers.config import ConfigError
from vldistill.trainers.data.folder import DataError


def _raise(exc):
    def fn():
        raise exc
    return fn


def test_ours_comes_back_from_a_ray_task_error():
    wrapped = ray.exceptions.RayTaskError("f", "traceback", ConfigError("teacher.pretrained: x")).as_instanceof_cause()
    with pytest.raises(ConfigError, match="teacher.pretrained: x") as info:
        _unwrap(_raise(wrapped), "the shared-asset task")
    assert type(info.value) is ConfigError


def test_ours_comes_back_through_layers_of_wrapping():
    try:
        try:
            raise DataError("cannot read image /d/a.png")
        except DataError as inner:
            raise RuntimeError("UserCodeException") from inner
    except RuntimeError as outer:
        layered = outer
    with pytest.raises(DataError, match="a.png"):
        _unwrap(_raise(layered), "image store")


def test_a_ray_failure_is_an_asset_error():
    with pytest.raises(AssetError, match="image store failed"):
        _unwrap(_raise(ray.exceptions.RaySystemError("node died")), "image store")
