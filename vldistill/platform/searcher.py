"""Optuna searcher that runs every sampled configuration once per seed, and records
trials stopped early by the scheduler as PRUNED (Ray's default tells Optuna COMPLETE,
which makes TPE learn from 1-epoch values as if they were final; docs/architecture.md).

One Optuna trial = one configuration = ``len(seeds)`` Tune trials. The Optuna trial is
told its outcome once all its seeds have finished:

* every seed completed all epochs -> ``COMPLETE`` with the mean metric(s) over seeds;
* any seed was stopped before its last epoch (``epoch < epochs`` in its last result,
  which is how an ASHA stop looks) -> ``PRUNED`` (Optuna 5 refuses a value with PRUNED;
  the intermediate values reported per epoch by the first seed stand in for it);
* any seed failed -> ``FAIL``.

Whether a stop was early is read from the trial's own last result, so nothing has to be
shared with the scheduler and the rule survives ``Tuner.restore`` unchanged.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


class DefineByRun:
    """Picklable define-by-run space (Tune pickles the searcher into the experiment state)."""

    def __init__(self, space: Any):
        self.space = space

    def __call__(self, trial: Any) -> dict:
        from vldistill.search_spaces.loader import define_by_run

        return define_by_run(self.space)(trial)


def was_stopped_early(result: dict | None) -> bool:
    """True when a trial's last result is before its final epoch (and it did not fail)."""
    if not result or "epoch" not in result or "epochs" not in result or result.get("trial_error"):
        return False
    return int(result["epoch"]) < int(result["epochs"])


class SeededOptunaSearch(OptunaSearch):
    """``OptunaSearch`` + repeats over seeds + honest PRUNED/FAIL states."""

    def __init__(self, *args: Any, seeds: tuple[int, ...] = (0,), search_space: Any = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._seeds = tuple(seeds)
        self._vl_space = search_space  # decodes JSON-encoded list/dict choices
        self._pending: list[tuple[str, int, dict]] = []  # (group id, seed index, params)
        self._group_of: dict[str, str] = {}  # tune trial id -> group id (first trial's id)
        self._outcomes: dict[str, dict[str, tuple[dict | None, bool]]] = {}

    def suggest(self, trial_id: str) -> dict | None:
        if self._pending:
            gid, idx, params = self._pending.pop(0)
        else:
            params = super().suggest(trial_id)
            if params is None:
                return None
            if self._vl_space is not None:
                from vldistill.search_spaces.loader import decode_params
                params = decode_params(self._vl_space, params)
            gid, idx = trial_id, 0
            self._pending += [(gid, i, dict(params)) for i in range(1, len(self._seeds))]
        self._group_of[trial_id] = gid
        return {**params, "seed": self._seeds[idx]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        gid = self._group_of.get(trial_id)
        # Intermediate values come from the group's first seed only: one value per step.
        if gid == trial_id and not isinstance(self.metric, list) and self.metric in result:
            self._ot_trials[gid].report(float(result[self.metric]), int(result.get("epoch", 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        gid = self._group_of.get(trial_id)
        if gid is None or gid in self._completed_trials:
            return
        group = self._outcomes.setdefault(gid, {})
        group[trial_id] = (result, error)
        if len(group) < len(self._seeds):
            return
        ot_trial = self._ot_trials[gid]
        outcomes = list(group.values())
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        try:
            if any(err or not res or res.get("trial_error") for res, err in outcomes):
                self._ot_study.tell(ot_trial, None, state=TrialState.FAIL)
            elif any(was_stopped_early(res) for res, _ in outcomes):
                self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
            else:
                values = [statistics.mean(float(res[m]) for res, _ in outcomes) for m in metrics]
                self._ot_study.tell(ot_trial, values if len(values) > 1 else values[0],
                                    state=TrialState.COMPLETE)
        except Exception as exc:  # e.g. a NaN value: keep the sweep going, say why
            log.warning("could not record Optuna trial %s: %s", ot_trial.number, exc)
        self._completed_trials.add(gid)
