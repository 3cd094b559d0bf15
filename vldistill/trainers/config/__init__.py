"""Configuration of one trial: the package that owns it, from YAML to a checked config.

- ``schema.py``: the frozen dataclasses (:class:`TrainConfig` and its groups) and
  :class:`ConfigError`; standard library only.
- ``convert.py``: plain dict <-> dataclasses (:func:`from_dict`, :func:`to_dict`), dotted
  key hints; ``dotted.py``: nested dict <-> ``{dotted key: value}`` (:func:`flatten`,
  :func:`unflatten`, :func:`get_dotted`, :func:`set_dotted`), the form search spaces, trial
  rows and W&B name config values in.
- ``compose.py``: Hydra composition of ``vldistill/conf`` (:func:`compose_config`,
  :func:`load_train_config`).
- ``check.py``: :func:`check`, the one validator the rest of the code calls, over the rule
  groups of ``values.py`` (values and ranges) and ``registries.py`` (registry names,
  compatibility, files).

Importing this package imports neither torch nor ray (``tests/unit/test_imports.py``): the
rules that need a registry import it when they run.
"""

from vldistill.trainers.config.check import check
from vldistill.trainers.config.compose import compose_config, load_train_config
from vldistill.trainers.config.convert import from_dict, to_dict, unknown_key_hint
from vldistill.trainers.config.dotted import flatten, get_dotted, set_dotted, unflatten
from vldistill.trainers.config.schema import (DEFAULT_STYLES, AttnConfig, AugmentConfig, CapConfig,
                                              ClsConfig, ConfigError, DataConfig, DistillConfig,
                                              EmbeddedTeacherConfig, EvalConfig, ImCstConfig,
                                              OptimConfig, PVLDConfig, StudentConfig, SynthConfig,
                                              TeacherConfig, TextConfig, TokenNCEConfig, TokensConfig,
                                              TrainConfig, UDistConfig, VLDConfig, VLProxConfig,
                                              WorldConfig)

__all__ = [
    "DEFAULT_STYLES", "AttnConfig", "AugmentConfig", "CapConfig", "ClsConfig", "ConfigError",
    "DataConfig", "DistillConfig", "EmbeddedTeacherConfig", "EvalConfig", "ImCstConfig",
    "OptimConfig", "PVLDConfig", "StudentConfig", "SynthConfig", "TeacherConfig", "TextConfig",
    "TokenNCEConfig", "TokensConfig", "TrainConfig", "UDistConfig", "VLDConfig", "VLProxConfig",
    "WorldConfig", "check", "compose_config", "flatten", "from_dict", "get_dotted",
    "load_train_config", "set_dotted", "to_dict", "unflatten", "unknown_key_hint",
]
