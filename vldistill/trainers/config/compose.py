"""Hydra composition: the YAML groups of ``vldistill/conf`` + overrides -> a checked config.

:func:`compose_config` composes ``vldistill/conf`` with Hydra overrides into a plain, resolved
dict (``initialize_config_module`` + ``compose``; Hydra never changes the working
directory); :func:`load_train_config` turns it into a :class:`TrainConfig` with absolute
paths and runs :func:`check.check` on it. Every problem is a :class:`ConfigError` naming the
key or option. Hydra and omegaconf are imported inside the functions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from vldistill.trainers.config.check import check
from vldistill.trainers.config.convert import from_dict, unknown_key_hint
from vldistill.trainers.config.schema import ConfigError, TrainConfig


def compose_config(overrides: Sequence[str]) -> dict:
    """Compose ``vldistill/conf`` with Hydra overrides into a plain, resolved dict.

    Raises:
        ConfigError: an unknown key (naming the valid keys of its group), an unknown group
            option or a malformed override, as Hydra words it.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module="vldistill.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as e:
        m = re.match(r"Could not override '([^']+)'", str(e))
        hint = unknown_key_hint(m.group(1)) if m else None
        raise ConfigError(hint or f"config: {e}".strip()) from None


def load_train_config(overrides: Sequence[str]) -> TrainConfig:
    """Compose + convert + :func:`check`; the returned config has absolute paths.

    Raises:
        ConfigError: naming the key, option or file of the first problem.
    """
    raw = compose_config(overrides)
    for key in ("out_dir", "cache_dir"):
        if raw.get(key) and "://" not in str(raw[key]):  # storage URIs stay as they are
            raw[key] = str(Path(raw[key]).expanduser().resolve())
    if raw.get("data", {}).get("root"):
        raw["data"]["root"] = str(Path(raw["data"]["root"]).expanduser().resolve())
    cfg = from_dict(raw)
    check(cfg)
    return cfg
