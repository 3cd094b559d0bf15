"""Optuna samplers adapted to ask-and-tell use (Ray Tune's ``OptunaSearch``).

Imported lazily by :func:`vldistill.search_spaces.suggest.grid_sampler`: importing the
package does not import optuna. The class lives at module level so that a searcher holding
it can be pickled (Tune checkpoints its searcher for resume).
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState


class AskTellGridSampler(optuna.samplers.GridSampler):
    """``GridSampler`` that can be told its last trial outside ``study.optimize``.

    Optuna's ``GridSampler.after_trial`` calls ``study.stop()`` once the grid is exhausted,
    and ``Study.stop`` raises ``RuntimeError`` outside ``optimize`` -- i.e. on the last
    ``study.tell`` of every ask-and-tell loop (optuna 5). Here the sweep's own budget
    (``SearchSpace.trial_count``) ends the search, so the stop request is dropped.
    """

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        try:
            super().after_trial(study, trial, state, values)
        except RuntimeError as e:
            if "Study.stop" not in str(e):
                raise
