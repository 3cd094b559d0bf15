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

Racing (``seeds: {min, max, margin, alpha, futility}``, docs/sweeps.md "Racing"): the
searcher first hands out every configuration of the finite space with ``min`` seeds; when
every trial handed out has finished, it replays the decisions (``platform/racing.py``) and
queues one more seed for each configuration of a still-undecided comparison that is not
futile (below ``max``), or ends the race. Only
then is every Optuna trial told: COMPLETE with the mean over the seeds its configuration
took (FAIL when none completed). While a round runs and nothing is queued, ``suggest``
returns ``None`` (Tune asks again later); once the race is over, ``Searcher.FINISHED``.
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


DESIGN_KEY = "__design__"  # trial config entry: the design point's name (not a config key)


class SeededOptunaSearch(OptunaSearch):
    """``OptunaSearch`` + repeats over seeds (fixed or raced) + honest PRUNED/FAIL states."""

    def __init__(self, *args: Any, seeds: tuple[int, ...] = (0,), search_space: Any = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._seeds = tuple(seeds)
        self._vl_space = search_space  # decodes JSON-encoded list/dict choices
        self._pending: list[tuple[str, int, dict]] = []  # (group id, seed index, params)
        self._group_of: dict[str, str] = {}  # tune trial id -> group id (first trial's id)
        self._outcomes: dict[str, dict[str, tuple[dict | None, bool]]] = {}
        self._racing = getattr(search_space, "racing", None)
        self._race: dict[str, Any] = {"asked": 0, "handed": {}, "config": {}, "params": {},
                                      "seed_of": {}, "over": False}

    def suggest(self, trial_id: str) -> dict | None:
        if self._racing is not None:
            return self._race_suggest(trial_id)
        if self._pending:
            gid, idx, params = self._pending.pop(0)
        else:
            params = super().suggest(trial_id)
            if params is None:
                return None
            params = self._decode(params)
            gid, idx = trial_id, 0
            self._pending += [(gid, i, dict(params)) for i in range(1, len(self._seeds))]
        self._group_of[trial_id] = gid
        return {**params, "seed": self._seeds[idx]}

    def _decode(self, params: dict) -> dict:
        if self._vl_space is None:
            return params
        from vldistill.search_spaces.loader import decode_params
        from vldistill.search_spaces.spec import DESIGN_PARAM

        point = params.get(DESIGN_PARAM) if self._vl_space.design is not None else None
        params = decode_params(self._vl_space, params)
        return {**params, DESIGN_KEY: point} if point is not None else params

    # ----- racing: rounds of seeds for the configurations of undecided comparisons -----

    def _race_suggest(self, trial_id: str) -> dict | str | None:
        from vldistill.search_spaces.designs import config_key, space_points

        race = self._race
        if race["over"]:
            return self.FINISHED
        if not self._pending and race["asked"] < self._vl_space.grid_size():
            params = super().suggest(trial_id)
            if params is None:
                return None
            params = self._decode(params)
            names = {config_key(p.assignment): p.name for p in space_points(self._vl_space)}
            plain = {k: v for k, v in params.items() if k != DESIGN_KEY}
            race["config"][trial_id] = params.get(DESIGN_KEY) or names[config_key(plain)]
            race["params"][trial_id] = dict(params)
            race["asked"] += 1
            self._pending.insert(0, (trial_id, 0, dict(params)))
            self._pending += [(trial_id, i, dict(params)) for i in range(1, self._racing.min)]
        if not self._pending:
            return None  # a round is running: ask again once it is done
        gid, idx, params = self._pending.pop(0)
        self._group_of[trial_id] = gid
        race["handed"][gid] = race["handed"].get(gid, 0) + 1
        race["seed_of"][trial_id] = self._seeds[idx]
        return {**params, "seed": self._seeds[idx]}

    def race_values(self) -> dict[str, dict[int, float]]:
        """``{config name: {seed: value of the first metric}}`` of the completed trials."""
        metric = self.metric[0] if isinstance(self.metric, list) else self.metric
        out: dict[str, dict[int, float]] = {}
        for gid, group in self._outcomes.items():
            vals = out.setdefault(self._race["config"][gid], {})
            for tid, (res, err) in group.items():
                if not err and res and not res.get("trial_error") and metric in res:
                    vals[self._race["seed_of"][tid]] = float(res[metric])
        return out

    def _next_round(self) -> None:
        """Every trial handed out has finished: queue the next round, or end the race."""
        from vldistill.platform.racing import race, to_extend
        from vldistill.search_spaces.designs import space_comparisons

        r, space = self._racing, self._vl_space
        comps = space_comparisons(space)
        sign = -1.0 if space.modes[0] == "min" else 1.0
        decisions = race(self.race_values(), comps, r.min, r.max, r.margin, r.alpha, sign, r.futility,
                         r.variance)
        gid_of = {name: gid for gid, name in self._race["config"].items()}
        handed = {name: self._race["handed"].get(gid, 0) for name, gid in gid_of.items()}
        extend = to_extend(decisions, comps, handed, r.max)
        log.info("racing: %s; next round: %s", "; ".join(d.line() for d in decisions),
                 ", ".join(extend) or "none (race over)")
        for name in extend:
            gid = gid_of[name]
            self._pending.append((gid, handed[name], dict(self._race["params"][gid])))
        if not extend:
            self._race["over"] = True
            for gid in gid_of.values():
                self._tell(gid, force=True)

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
        if self._racing is not None:
            done = sum(len(g) for g in self._outcomes.values())
            if (not self._pending and done == sum(self._race["handed"].values())
                    and self._race["asked"] >= self._vl_space.grid_size()):
                self._next_round()
            return
        self._tell(gid)

    def _tell(self, gid: str, force: bool = False) -> None:
        """Tell Optuna the configuration's outcome once all its seeds have finished."""
        group = self._outcomes.get(gid, {})
        if gid in self._completed_trials or (not force and len(group) < len(self._seeds)):
            return
        ot_trial = self._ot_trials[gid]
        outcomes = list(group.values())
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if force:  # racing: the mean over the seeds that completed
            outcomes = [(res, err) for res, err in outcomes
                        if not err and res and not res.get("trial_error")]
        try:
            if not outcomes or any(err or not res or res.get("trial_error") for res, err in outcomes):
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
