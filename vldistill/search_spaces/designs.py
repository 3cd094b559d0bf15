"""Ablation designs generated from a base config, and the comparisons each design defines.

A search space may give ``design:`` instead of ``params:``; the design is a finite list of
configurations (:class:`DesignPoint`: a name and ``{dotted key: value}`` set on top of the
base config) plus the comparisons the report and the race decide (:class:`Comparison`: a
contrast over the points, positive = better in the space's ``mode``)::

    design:
      type: loco                       # loco | add_one | one_at_a_time | full_factorial
                                       # | fractional_factorial
      base: {distill.weights.mse: 1.0} # set in every point (optional)
      components:                      # loco: name -> the "off" values; add_one: the "on" ones
        mse: {distill.weights.mse: 0.0}
      factors:                         # one_at_a_time: key -> levels (the first = the base's);
        distill.weights.im_cst: [0.0, 1.0]   # factorials: key -> [low, high], or
        vl: {distill.weights.vlprox: [0.0, 1.0], distill.vlprox.k: [10, 256]}  # a named group
      generators: [D=AB, E=AC]         # fractional_factorial (else `p`: a standard table)
      p: 2

Designs and their comparisons:

- ``loco``: ``base`` + one point per component removed (``no_<name>``); comparison
  ``<name>`` = base - no_<name> (the component's contribution).
- ``add_one``: ``base`` + one point per component added (``add_<name>``); comparison
  ``<name>`` = add_<name> - base.
- ``one_at_a_time``: ``base`` (every factor at its first level) + one point per other level
  of each factor; each point is compared with the base.
- ``full_factorial`` / ``fractional_factorial``: two levels per factor, the factors lettered
  A, B, C, ... in YAML order; a 2^(k-p) fraction takes the first k-p factors in full
  (standard order, A alternating fastest) and sets each generated factor to a product of
  them (``D=AB``: D's level is A's sign times B's). Points are named in Yates notation: the
  lower-case letters of the factors at their high level, ``(1)`` for all low. Each main
  effect is mean(high) - mean(low); the defining relation, the resolution (the shortest
  word in it) and every main effect's aliases are stated (:attr:`Design.aliases`).

A grid space without a design gets comparisons too (:func:`space_comparisons`): a grid of
two-level parameters that all name a ``baseline`` is a full factorial (main effects),
otherwise every configuration is compared with the all-baseline one.

Nothing here imports ray, torch or optuna.
"""

from __future__ import annotations

import itertools
import json
import re
import string
from dataclasses import dataclass, field
from typing import Any

from vldistill.search_spaces.spec import SearchSpaceError, same_value

DESIGN_TYPES = ("loco", "add_one", "one_at_a_time", "full_factorial", "fractional_factorial")
_DESIGN_KEYS = ("type", "base", "components", "factors", "generators", "p")
# Minimum-aberration generators of common two-level fractions, (k, p) -> generators.
STANDARD_GENERATORS = {
    (3, 1): ("C=AB",), (4, 1): ("D=ABC",), (5, 1): ("E=ABCD",), (5, 2): ("D=AB", "E=AC"),
    (6, 1): ("F=ABCDE",), (6, 2): ("E=ABC", "F=BCD"), (6, 3): ("D=AB", "E=AC", "F=BC"),
    (7, 1): ("G=ABCDEF",), (7, 2): ("F=ABCD", "G=ABDE"), (7, 3): ("E=ABC", "F=BCD", "G=ACD"),
    (7, 4): ("D=AB", "E=AC", "F=BC", "G=ABC"),
}


@dataclass(frozen=True)
class DesignPoint:
    """One configuration of a design: its name and the values it sets on the base config."""

    name: str
    assignment: dict[str, Any]


@dataclass(frozen=True)
class Comparison:
    """A contrast over configurations: ``sum(weights[c] * metric[c])`` per seed.

    Positive means better in the space's mode (the caller flips the sign for ``min``).
    ``note`` says what the contrast is (``base - no_mse``) and, for a fractional design,
    what it is aliased with.
    """

    name: str
    weights: dict[str, float]
    note: str = ""


@dataclass(frozen=True)
class Design:
    """A generated design: its points, comparisons and (factorials) aliasing."""

    type: str
    points: tuple[DesignPoint, ...]
    comparisons: tuple[Comparison, ...]
    spec: dict = field(default_factory=dict, compare=False)  # the YAML mapping, for to_dict
    resolution: int | None = None
    defining_relation: tuple[str, ...] = ()
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """Every dotted key some point sets, in first-seen order."""
        out: list[str] = []
        for p in self.points:
            out += [k for k in p.assignment if k not in out]
        return out

    def point(self, name: str) -> DesignPoint:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)


def _err(source: str, key: str, msg: str) -> SearchSpaceError:
    return SearchSpaceError(f"{source}: design.{key}: {msg}")


def _assignment(source: str, where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) and k for k in raw):
        raise _err(source, where, f"must map dotted config keys to values, got {raw!r}")
    return dict(raw)


def _named(source: str, where: str, raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict) or not raw:
        raise _err(source, where, f"must map names to {{dotted.key: value}}, got {raw!r}")
    return {str(n): _assignment(source, f"{where}.{n}", v) for n, v in raw.items()}


def _factors(source: str, raw: Any, two_level: bool) -> dict[str, dict[str, list]]:
    """``{factor name: {dotted key: levels}}``; a bare ``key: [levels]`` is named by the key."""
    if not isinstance(raw, dict) or not raw:
        raise _err(source, "factors", f"must map keys to lists of levels, got {raw!r}")
    out: dict[str, dict[str, list]] = {}
    for name, spec in raw.items():
        group = spec if isinstance(spec, dict) else {name: spec}
        sizes = set()
        for key, levels in group.items():
            if not isinstance(levels, list) or len(levels) < 2:
                raise _err(source, f"factors.{name}", f"{key}: needs a list of >= 2 levels, got {levels!r}")
            if two_level and len(levels) != 2:
                raise _err(source, f"factors.{name}", f"{key}: a two-level design needs exactly "
                                                      f"[low, high], got {levels!r}")
            sizes.add(len(levels))
        if len(sizes) != 1:
            raise _err(source, f"factors.{name}", "every key of a factor group needs as many levels")
        out[str(name)] = {k: list(v) for k, v in group.items()}
    return out


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        out.update(p)
    return out


def loco(base: dict[str, Any], components: dict[str, dict[str, Any]]) -> Design:
    """The base and one point per component removed; comparison = base - without it."""
    points = [DesignPoint("base", dict(base))]
    comps = []
    for name, off in components.items():
        points.append(DesignPoint(f"no_{name}", _merge(base, off)))
        comps.append(Comparison(name, {"base": 1.0, f"no_{name}": -1.0}, f"base - no_{name}"))
    return Design("loco", tuple(points), tuple(comps))


def add_one(base: dict[str, Any], components: dict[str, dict[str, Any]]) -> Design:
    """The base and one point per component added; comparison = with it - base."""
    points = [DesignPoint("base", dict(base))]
    comps = []
    for name, on in components.items():
        points.append(DesignPoint(f"add_{name}", _merge(base, on)))
        comps.append(Comparison(name, {f"add_{name}": 1.0, "base": -1.0}, f"add_{name} - base"))
    return Design("add_one", tuple(points), tuple(comps))


def _short(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def one_at_a_time(base: dict[str, Any], factors: dict[str, dict[str, list]]) -> Design:
    """Every factor at its first level (the base), then each other level of one factor."""
    base = _merge(base, *({k: v[0] for k, v in g.items()} for g in factors.values()))
    points = [DesignPoint("base", base)]
    comps = []
    for name, group in factors.items():
        n_levels = len(next(iter(group.values())))
        for i in range(1, n_levels):
            label = f"{name}={_short(group[next(iter(group))][i])}"
            points.append(DesignPoint(label, _merge(base, {k: v[i] for k, v in group.items()})))
            comps.append(Comparison(label, {label: 1.0, "base": -1.0}, f"{label} - base"))
    return Design("one_at_a_time", tuple(points), tuple(comps))


def _word_product(a: str, b: str) -> str:
    """Product of two effect words (letters squared cancel), letters sorted; '' = I."""
    return "".join(sorted(set(a) ^ set(b)))


def defining_relation(generators: tuple[str, ...]) -> tuple[str, ...]:
    """Every word of the defining relation I = ... (all products of the generator words)."""
    words = [_parse_generator(g)[0] + _parse_generator(g)[1] for g in generators]
    words = ["".join(sorted(w)) for w in words]
    out: set[str] = set()
    for r in range(1, len(words) + 1):
        for combo in itertools.combinations(words, r):
            w = ""
            for x in combo:
                w = _word_product(w, x)
            out.add(w)
    return tuple(sorted(out, key=lambda w: (len(w), w)))


def _parse_generator(g: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*([A-Z])\s*=\s*([A-Z]+)\s*", g)
    if not m:
        raise ValueError(f"generator {g!r} is not like D=AB")
    return m.group(1), m.group(2)


def two_level_design(factors: dict[str, dict[str, list]], base: dict[str, Any],
                     generators: tuple[str, ...] = ()) -> Design:
    """A 2^k (no generators) or 2^(k-p) design over two-level factors; see the module doc."""
    names = list(factors)
    k, p = len(names), len(generators)
    letters = string.ascii_uppercase[:k]
    gen = dict(_parse_generator(g) for g in generators)
    basic = letters[:k - p]
    if sorted(gen) != sorted(letters[k - p:]) or any(set(w) - set(basic) for w in gen.values()):
        raise ValueError(f"generators {list(generators)} must define the last {p} factors "
                         f"({', '.join(letters[k - p:])}) from the first {k - p} ({', '.join(basic)})")
    points, signs = [], []
    for run in itertools.product((-1, 1), repeat=k - p):
        s = dict(zip(basic, reversed(run)))  # A alternates fastest (standard order)
        for letter, word in gen.items():
            s[letter] = 1
            for c in word:
                s[letter] *= s[c]
        name = "".join(c.lower() for c in letters if s[c] > 0) or "(1)"
        assign = _merge(base, *({key: lv[0 if s[c] < 0 else 1] for key, lv in factors[n].items()}
                                for c, n in zip(letters, names)))
        points.append(DesignPoint(name, assign))
        signs.append(s)
    n = len(points)
    relation = defining_relation(generators) if generators else ()
    aliases = {c: tuple(sorted((_word_product(c, w) for w in relation), key=lambda w: (len(w), w)))
               for c in letters}
    comps = []
    for c, name in zip(letters, names):
        alias = [a for a in aliases[c] if a]
        note = f"{c}: mean(high) - mean(low)" + (f"; aliased with {', '.join(alias)}" if alias else "")
        comps.append(Comparison(name, {pt.name: 2.0 * s[c] / n for pt, s in zip(points, signs)}, note))
    kind = "fractional_factorial" if generators else "full_factorial"
    return Design(kind, tuple(points), tuple(comps), resolution=min(map(len, relation)) if relation else None,
                  defining_relation=relation, aliases=aliases if generators else {})


def parse_design(raw: Any, source: str) -> Design:
    """The ``design:`` mapping of a search space -> :class:`Design` (structural checks)."""
    if not isinstance(raw, dict):
        raise _err(source, "<root>", f"must be a mapping with a type ({', '.join(DESIGN_TYPES)})")
    unknown = [k for k in raw if k not in _DESIGN_KEYS]
    if unknown:
        raise _err(source, str(unknown[0]), f"unknown key; valid: {', '.join(_DESIGN_KEYS)}")
    kind = raw.get("type")
    if kind not in DESIGN_TYPES:
        raise _err(source, "type", f"unknown design {kind!r}; valid: {', '.join(DESIGN_TYPES)}")
    base = _assignment(source, "base", raw["base"]) if raw.get("base") is not None else {}
    need = "components" if kind in ("loco", "add_one") else "factors"
    other = "factors" if need == "components" else "components"
    if need not in raw:
        raise _err(source, need, f"required by design type {kind}")
    if other in raw:
        raise _err(source, other, f"does not apply to design type {kind} (it takes {need})")
    if kind != "fractional_factorial" and ("generators" in raw or "p" in raw):
        raise _err(source, "generators" if "generators" in raw else "p",
                   "only applies to design type fractional_factorial")
    if kind == "loco":
        design = loco(base, _named(source, "components", raw["components"]))
    elif kind == "add_one":
        design = add_one(base, _named(source, "components", raw["components"]))
    elif kind == "one_at_a_time":
        design = one_at_a_time(base, _factors(source, raw["factors"], two_level=False))
    else:
        factors = _factors(source, raw["factors"], two_level=True)
        gens = _generators(source, raw, kind, len(factors))
        try:
            design = two_level_design(factors, base, gens)
        except ValueError as e:
            raise _err(source, "generators", str(e)) from None
    names = [p.name for p in design.points]
    if len(set(names)) != len(names):
        raise _err(source, need, f"two points share a name: {names}")
    return Design(design.type, design.points, design.comparisons, dict(raw), design.resolution,
                  design.defining_relation, design.aliases)


def _generators(source: str, raw: dict, kind: str, k: int) -> tuple[str, ...]:
    if kind == "full_factorial":
        return ()
    gens = raw.get("generators")
    if gens is None:
        p = raw.get("p")
        if (k, p) not in STANDARD_GENERATORS:
            raise _err(source, "p", f"give generators (like [D=AB, E=AC]) or a p with a standard "
                                    f"table for k={k}: {sorted(q for kk, q in STANDARD_GENERATORS if kk == k)}")
        return STANDARD_GENERATORS[(k, p)]
    if not isinstance(gens, list) or not gens or not all(isinstance(g, str) for g in gens):
        raise _err(source, "generators", f"must be a list like [D=AB, E=AC], got {gens!r}")
    if "p" in raw and raw["p"] != len(gens):
        raise _err(source, "p", f"{raw['p']!r} but {len(gens)} generators")
    return tuple(gens)


# ----- finite spaces: their configurations and comparisons ----------------------------------


def config_key(assignment: dict[str, Any]) -> str:
    """A canonical text of a configuration's values (to find it again among the points)."""
    return json.dumps(sorted(assignment.items()), sort_keys=True, default=str)


def space_points(space: Any) -> list[DesignPoint]:
    """Every configuration of a finite space: the design's points, or the grid's product."""
    if space.design is not None:
        return list(space.design.points)
    params = list(space.params.values())
    if not params or not all(p.categorical for p in params) or any(p.when for p in params):
        raise SearchSpaceError(f"{space.source or space.name}: racing needs a design or a grid of "
                               "choice/grid params without `when`")
    points = []
    for combo in itertools.product(*(p.values for p in params)):
        assign = dict(zip((p.key for p in params), combo))
        points.append(DesignPoint(",".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in assign.items()),
                                  assign))
    return points


def space_comparisons(space: Any) -> list[Comparison]:
    """The comparisons a space defines (see the module doc); [] when it defines none."""
    if space.design is not None:
        return list(space.design.comparisons)
    params = list(space.params.values())
    if (not params or not all(p.categorical and p.baseline is not None and not p.when
                              for p in params)):
        return []
    points = space_points(space)
    base = [pt.name for pt in points
            if all(same_value(pt.assignment[p.key], p.baseline) for p in params)][0]
    if all(len(p.values) == 2 for p in params):
        n = len(points)
        out = []
        for p in params:
            hi = [v for v in p.values if not same_value(v, p.baseline)][0]
            w = {pt.name: (2.0 if same_value(pt.assignment[p.key], hi) else -2.0) / n for pt in points}
            out.append(Comparison(p.key.split(".")[-1], w,
                                  f"{p.key}={_short(hi)} vs {_short(p.baseline)}: main effect"))
        return out
    return [Comparison(pt.name, {pt.name: 1.0, base: -1.0}, f"{pt.name} - {base}")
            for pt in points if pt.name != base]
