"""``check(cfg)``: the one validator of a whole config, run before anything is built or written.

Everything the rest of the code needs to know about whether a config can run is decided
here, in two named groups: the value rules (``values.py``: types are already guaranteed by
``convert.from_dict``; ranges, allowed values, the world's recipe, the synthesis settings)
and the registry rules (``registries.py``: loss, student, teacher and text-source names,
compatibility between values, files). ``vldistill train``, a sweep's base config
(``compose.load_train_config``), every point of a search space
(``search_spaces/validate.py``) and every trial (``trainers/loop.py``) call :func:`check`
and nothing else. It raises the first problem as a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from vldistill.trainers.config.registries import registry_rules
from vldistill.trainers.config.schema import TrainConfig
from vldistill.trainers.config.values import value_rules

RULE_GROUPS = (value_rules, registry_rules)


def check(cfg: TrainConfig) -> None:
    """Every value, range, registry-name, compatibility and file rule of ``cfg``.

    Raises:
        ConfigError: naming the dotted key and the rule (the first problem found).
    """
    for rules in RULE_GROUPS:
        rules(cfg)
