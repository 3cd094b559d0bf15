"""How many trials Tune keeps started-or-queued, and the command line's ``resources.*``."""

from __future__ import annotations

import pytest

from vldistill.platform.sweep import (QUEUE_CAP, SweepError, _concurrency, _split_teacher_resources, queue_depth,
                                      with_teacher_resources)
from vldistill.search_spaces.loader import search_space_from_dict


def _space(sampler="grid", n=6, **res):
    d = {"name": "q", "metric": "novel_acc", "mode": "max", "sampler": sampler, "sampler_seed": 0,
         "seeds": [0], "resources": {"cpu": 1, "gpu": 0, "workers": 1, **res}, "overrides": [],
         "params": {"distill.cls.tau": {"choice": [0.01 * (i + 1) for i in range(n)]}}}
    if sampler != "grid":
        d["num_samples"] = n
    return search_space_from_dict(d)


def test_every_trial_is_queued_even_when_the_cluster_has_no_worker_yet():
    empty_head = {"CPU": 0.0, "memory": 8 * 2**30}  # an autoscaling cluster before scale-up
    assert queue_depth(_space("grid", 6), empty_head)[0] == 6
    assert queue_depth(_space("random", 300), empty_head)[0] == QUEUE_CAP
    assert _concurrency(_space().resources, empty_head) == 1  # what fits now: not the queue


def test_tpe_queues_its_random_start_and_an_explicit_cap_wins():
    cluster = {"CPU": 4.0, "memory": 64 * 2**30}
    depth, why = queue_depth(_space("tpe", 40), cluster)
    assert depth == 10 and "tpe" in why
    assert queue_depth(_space("tpe", 40), {"CPU": 32.0, "memory": 256 * 2**30})[0] == 32
    assert queue_depth(_space("tpe", 40, max_concurrent=3), cluster) == (3, "resources.max_concurrent")


def test_memory_is_a_resource_that_limits_what_fits():
    res = _space(memory=6).resources
    assert res.memory == 6.0 and res.to_dict()["memory"] == 6.0
    assert _concurrency(res, {"CPU": 16.0, "memory": 20 * 2**30}) == 3  # 20 GiB / 6 GiB
    assert "memory" not in _space().resources.to_dict()  # the 2 GiB default stays implicit


def test_resources_on_the_command_line_override_the_space_and_are_checked():
    rest, res = _split_teacher_resources(["resources.gpu=0.25", "optim.epochs=2", "teacher_resources.gpu=1"])
    assert rest == ["optim.epochs=2"]
    assert res == {"resources": {"gpu": 0.25}, "teacher_resources": {"gpu": 1}}
    space = with_teacher_resources(_space(), res)
    assert space.resources.gpu == 0.25 and space.resources.cpu == 1.0 and space.teacher_resources["gpu"] == 1
    with pytest.raises(SweepError, match=r"resources\.gpu.*-1"):
        with_teacher_resources(_space(), {"resources": {"gpu": -1}})
    with pytest.raises(SweepError, match=r"resources\.memory"):
        with_teacher_resources(_space(), {"resources": {"memory": 0}})
