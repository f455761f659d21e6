"""Declared ranges for the fields of a frozen dataclass (the Recipe's): each field is a `knob`,
the values it allows, declared with it and checked when the object is built.
"""

import dataclasses
import math
from dataclasses import dataclass


def _number(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Span:
    """A number from `lo` to `hi`, finite; an `open` end is excluded (for `int` fields an
    integer)."""
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def allows(self, value):
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        # Bounds first: math.isfinite cannot take an int too large for a float.
        return above and below and math.isfinite(value)

    def describe(self, kind):
        if kind is int:
            return f"an integer from {self.lo} to {self.hi}"
        return (f"a number in {'(' if self.lo_open else '['}{_number(self.lo)}, "
                f"{_number(self.hi)}{')' if self.hi_open else ']'}")


@dataclass(frozen=True)
class OneOf:
    """One of a few values."""
    choices: tuple

    def allows(self, value):
        return value in self.choices

    def describe(self, kind):
        if kind is bool:
            return "true or false"
        return "one of " + ", ".join(str(c) for c in self.choices)


@dataclass(frozen=True)
class Ints:
    """Integers, each from `lo` to `hi` (written "64,256,256" on the command line): `count`
    of them, or between count[0] and count[1]."""
    count: object
    lo: int
    hi: int

    def _counts(self):
        return (self.count, self.count) if isinstance(self.count, int) else self.count

    def allows(self, value):
        fewest, most = self._counts()
        return fewest <= len(value) <= most and all(
            type(v) is int and self.lo <= v <= self.hi for v in value)

    def describe(self, kind):
        fewest, most = self._counts()
        many = f"{fewest}" if fewest == most else f"{fewest} to {most}"
        return f"{many} comma-separated integers from {self.lo} to {self.hi}"

    def parse(self, text):
        return tuple(int(v) for v in text.split(","))


@dataclass(frozen=True)
class Names:
    """Names from `choices`, each at most once, in the order given ("crop,flip")."""
    choices: object         # a collection of names (read when checking, so it may grow)

    def allows(self, value):
        return len(set(value)) == len(value) and all(
            isinstance(v, str) and v in self.choices for v in value)

    def describe(self, kind):
        return "comma-separated names, each once, from: " + ", ".join(self.choices)

    def parse(self, text):
        return tuple(v.strip() for v in text.split(",") if v.strip())


FLAG = OneOf((True, False))


def knob(allowed):
    """A Recipe field and the values it allows (Span, OneOf, Ints or Names); its value comes
    from each named recipe (hlb.recipes.RECIPES), written whole."""
    return dataclasses.field(metadata={"allowed": allowed})


def _typed(kind, value):
    """`value` as a `kind` field holds it, or None when it is of another type (an int is
    taken for a float; a bool is never a number)."""
    if isinstance(value, bool) != (kind is bool):
        return None
    if kind is float and isinstance(value, int):
        return float(value)
    if kind is tuple:               # its knob checks the items (Ints, Names)
        return value if isinstance(value, tuple) else None
    return value if isinstance(value, kind) else None


def _shown(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def field_problems(obj):
    """One text per field of `obj` outside its declared range; fields declared `float` and
    given an int are stored as floats (the object is frozen: this is its one way in)."""
    problems = []
    for f in dataclasses.fields(obj):
        allowed = f.metadata.get("allowed")
        if allowed is None:
            continue
        value = getattr(obj, f.name)
        typed = _typed(f.type, value)
        if typed is None or not allowed.allows(typed):
            problems.append(f"{f.name}={_shown(value)}: expected {allowed.describe(f.type)}")
        elif typed is not value:
            object.__setattr__(obj, f.name, typed)
    return problems
