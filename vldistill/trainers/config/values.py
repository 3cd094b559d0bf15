"""Value rules: every range and allowed value of a config, field by field, no registry needed.

:func:`value_rules` runs the named rule groups below in order and raises the first problem
as a :class:`ConfigError` naming the dotted key. ``convert.from_dict`` runs it on every
:class:`TrainConfig` it builds, and ``check.check`` runs it again with the registry rules.
The world's recipe (``trainers/data/world.py``, numpy only) and the synthesis settings
(``trainers/synth.py``) keep their rules next to the code that reads them; they are called
from here, lazily, so importing the config package imports neither torch nor ray.
"""

from __future__ import annotations

from vldistill.trainers.config.schema import ConfigError, TrainConfig


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _run_rules(cfg: TrainConfig) -> None:
    _check(cfg.device in ("auto", "cpu", "cuda"), "device", f"must be auto, cpu or cuda, got {cfg.device!r}")
    _check(cfg.precision in ("auto", "fp32", "bf16"), "precision",
           f"must be auto, fp32 or bf16, got {cfg.precision!r}")


def _data_rules(cfg: TrainConfig) -> None:
    d = cfg.data
    _check(d.source in ("world", "folder"), "data.source", f"must be 'world' or 'folder', got {d.source!r}")
    _check(d.source == "world" or d.root is not None, "data.root", "required when data.source is 'folder'")
    if d.source == "world":
        from vldistill.trainers.data.world import world_problems  # numpy, no torch
        for key, rule in world_problems(d.world)[:1]:
            _check(False, key, rule)
    _check(0 < d.train_fraction < 1, "data.train_fraction", "must be in (0, 1)")
    _check(d.images_per_class >= 0, "data.images_per_class", "must be >= 0")
    _check(d.image_size >= 8, "data.image_size", "must be >= 8")


def _student_rules(cfg: TrainConfig) -> None:
    s = cfg.student
    _check(s.image_size >= 8, "student.image_size", "must be >= 8")
    _check(s.head in ("linear", "mlp"), "student.head", f"must be 'linear' or 'mlp', got {s.head!r}")
    for key in ("mean", "std"):
        v = getattr(s, key)
        _check(v is None or len(v) == 3, f"student.{key}", "must have 3 values")


def _schedule_rules(cfg: TrainConfig) -> None:
    """Optimisation, evaluation frequency and the student's views."""
    _check(cfg.optim.epochs >= 1, "optim.epochs", "must be >= 1")
    _check(cfg.optim.batch_size >= 2, "optim.batch_size", "must be >= 2 (contrastive losses)")
    _check(cfg.optim.lr > 0, "optim.lr", "must be > 0")
    _check(cfg.eval.every >= 1, "eval.every", "must be >= 1")
    _check(0 < cfg.augment.scale_min <= 1, "augment.scale_min", "must be in (0, 1]")
    _check(cfg.augment.views >= 0, "augment.views", "must be >= 0")


def _temperature_rules(cfg: TrainConfig) -> None:
    """Every softmax temperature and logit scale of the losses is positive."""
    d = cfg.distill
    for key, tau in (("distill.cls.tau", d.cls.tau), ("distill.im_cst.tau", d.im_cst.tau),
                     ("distill.vlprox.tau", d.vlprox.tau), ("distill.token_nce.tau", d.token_nce.tau)):
        _check(tau > 0, key, f"must be > 0 (a softmax temperature), got {tau}")
    for key, tau in (("distill.cap.tau", d.cap.tau), ("distill.vld.temperature", d.vld.temperature),
                     ("distill.pvld.temperature", d.pvld.temperature),
                     ("distill.udist.temperature", d.udist.temperature),
                     ("distill.vld.logit_scale", d.vld.logit_scale),
                     ("distill.pvld.logit_scale", d.pvld.logit_scale),
                     ("distill.udist.logit_scale", d.udist.logit_scale)):
        _check(tau > 0, key, f"must be > 0, got {tau}")


def _distill_rules(cfg: TrainConfig) -> None:
    d = cfg.distill
    _check("{}" in d.text.template, "distill.text.template", "must contain '{}' where the class name goes")
    _check(d.vld.bank_size >= 0, "distill.vld.bank_size", "must be >= 0 (0 = every sentence)")
    _check(d.text.attributes != "", "distill.text.attributes", "must be full, partial, noisy or a JSON file path")
    _check(d.vlprox.k >= 1, "distill.vlprox.k", f"must be >= 1, got {d.vlprox.k}")
    for name, w in d.weights.items():
        _check(w >= 0, f"distill.weights.{name}", f"must be >= 0, got {w}")
    _check(any(w > 0 for w in d.weights.values()), "distill.weights", "at least one loss needs a weight > 0")
    _check(d.token_nce.queue_size >= 0, "distill.token_nce.queue_size", "must be >= 0")
    for key in ("attn", "token_nce"):
        lm = getattr(d, key).layer_map
        _check(lm is None or all(len(p) == 2 for p in lm), f"distill.{key}.layer_map",
               f"must be a list of [student index, teacher index] pairs, got {lm}")


def _eval_rules(cfg: TrainConfig) -> None:
    ev = cfg.eval
    _check(ev.neigh_k >= 1, "eval.neigh_k", f"must be >= 1, got {ev.neigh_k}")
    _check(ev.vlalign_k >= 2, "eval.vlalign_k", f"must be >= 2 (pairs of class texts), got {ev.vlalign_k}")
    _check(ev.few_shot >= 0, "eval.few_shot", f"must be >= 0, got {ev.few_shot}")
    _check(ev.few_shot_steps >= 1, "eval.few_shot_steps", f"must be >= 1, got {ev.few_shot_steps}")
    _check(ev.few_shot_lr > 0, "eval.few_shot_lr", f"must be > 0, got {ev.few_shot_lr}")
    _check(ev.linear_probe_steps >= 1, "eval.linear_probe_steps", "must be >= 1")
    _check(ev.linear_probe_wd >= 0, "eval.linear_probe_wd", "must be >= 0")


def _source_rules(cfg: TrainConfig) -> None:
    """Where the training images come from: real, or synthesised from the teacher (P3)."""
    d = cfg.data
    _check(d.train_source in ("real", "synthetic"), "data.train_source",
           f"must be 'real' or 'synthetic', got {d.train_source!r}")
    if d.train_source == "synthetic":
        from vldistill.trainers.synth import validate_synth  # its rules live with the strategies
        validate_synth(d.synthetic)
        _check(d.synthetic.image_size == d.image_size, "data.synthetic.image_size",
               f"must equal data.image_size ({d.image_size}), got {d.synthetic.image_size}")


def _teacher_rules(cfg: TrainConfig) -> None:
    e = cfg.teacher.embedded
    _check(e.steps >= 1 and e.batch_size >= 2, "teacher.embedded", "steps >= 1, batch_size >= 2")


VALUE_RULES = (_run_rules, _data_rules, _student_rules, _schedule_rules, _temperature_rules,
               _distill_rules, _eval_rules, _source_rules, _teacher_rules)


def value_rules(cfg: TrainConfig) -> None:
    """Every value and range of ``cfg`` (no registry, no file).

    Raises:
        ConfigError: naming the dotted key and the rule (the first problem found).
    """
    for rules in VALUE_RULES:
        rules(cfg)
