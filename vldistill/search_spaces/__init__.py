"""YAML search spaces shipped with vldistill, and their loader/validator.

A search space (``<name>.yaml`` here, or any file) names dotted ``TrainConfig`` paths to
sweep with ``choice``/``grid``/``uniform``/``loguniform``/``int``, optional ``baseline`` and
``when`` per parameter, the metric(s) and mode(s), sampler, scheduler, samples, seeds,
resources and Hydra overrides; see :mod:`~vldistill.search_spaces.loader` for the schema.

- ``spec.py``: the frozen dataclasses (``SearchSpace``, ``ParamSpec``, ...) and ``to_dict``.
- ``loader.py``: YAML -> ``SearchSpace`` with structural checks; re-exports the whole API.
- ``validate.py``: paths, values and registry names checked against the typed config.
- ``suggest.py``: Optuna define-by-run function, grid points/sampler, decoding of trial params.
- ``samplers.py``: an ask-and-tell-safe ``GridSampler`` (imports optuna; loaded lazily).
- ``registry.py``: the samplers and trial schedulers by name (``SAMPLERS``, ``SCHEDULERS``:
  name -> builder); the loader accepts exactly their keys.
- ``designs.py``: ablation designs (loco, add_one, one_at_a_time, full/fractional factorial)
  and the comparisons a space defines (what the report and the race decide).
- ``get_dotted``/``set_dotted``/``flatten``/``unflatten`` (re-exported from ``trainers/config/dotted.py``).

Shipped (``vldistill spaces`` lists them with their questions): ``smoke``, ``default``,
``p1_losses``, ``p1_loco``, ``students``, ``attribute_sources``, ``prompt_diversification``,
``dime_fm``, ``distillvlm``; the validator rejects spaces naming keys the config lacks.

Nothing here imports ray (only the sweep driver under ``platform/`` does).
"""

from vldistill.search_spaces.loader import (KNOWN_METRICS, ParamSpec, Resources, Scheduler,
                                            SearchSpace, SearchSpaceError, apply_params,
                                            decode_params, define_by_run, flatten, get_dotted,
                                            grid_points, grid_sampler, list_search_spaces,
                                            load_search_space, search_space_from_dict,
                                            set_dotted, unflatten, validate_search_space)

__all__ = [
    "KNOWN_METRICS", "ParamSpec", "Resources", "Scheduler", "SearchSpace", "SearchSpaceError",
    "apply_params", "decode_params", "define_by_run", "flatten", "get_dotted", "grid_points",
    "grid_sampler", "list_search_spaces", "load_search_space", "search_space_from_dict",
    "set_dotted", "unflatten", "validate_search_space",
]
