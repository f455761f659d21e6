"""Recipe values given as text, `key=value`, as `--set` and `hlb.train(overrides=...)` take them.

This side only turns text into a value of the field's type; whether the value is allowed is the
Recipe's own check (hlb.recipes), so a value set here and one set in code meet the same rules.
"""

import dataclasses
import shlex
import sys

from hlb.errors import UsageError
from hlb.recipes import Recipe, get_recipe

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_WANTED = {bool: "true or false", int: "an integer", float: "a number",
           tuple: "comma-separated values"}
# Keys of the decoupled SGD form, replaced on 2026-12-06 by plain per-step rates.
RENAMED = {"lr": "head_lr", "bias_lr_scale": "bias_lr", "whiten_bias_lr_scale": "whiten_bias_lr"}


def settable():
    """The fields `--set` may change, by name: every one but the recipe's name."""
    return {f.name: f.type for f in dataclasses.fields(Recipe) if f.name != "name"}


def parse_value(key, text):
    """`text` as a value of field `key`'s type; ValueError when it is not one."""
    kind = settable()[key]
    if kind is bool:
        lowered = text.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise ValueError(text)
        return lowered in _TRUE
    if kind is tuple:           # its knob knows its items (integers, names)
        knob = next(f.metadata["allowed"] for f in dataclasses.fields(Recipe) if f.name == key)
        return knob.parse(text)
    return kind(text)           # int, float or str


def override(recipe, assignments):
    """`recipe` with each "key=value" applied. Every problem (a malformed item, an unknown key,
    text that is not of the field's type, a value out of range) goes into one UsageError."""
    fields = settable()
    changes, problems = {}, []
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            problems.append(f"--set {item}: expected key=value")
        elif key in RENAMED:
            problems.append(f"--set {item}: {key} is gone: learning rates are now plain rates "
                            f"per step (head_lr, bias_lr, whiten_bias_lr; see docs/method.md); "
                            f"set {RENAMED[key]} instead")
        elif key not in fields:
            problems.append(f"--set {item}: unknown key {key!r}; valid keys: "
                            + ", ".join(sorted(fields)))
        else:
            try:
                changes[key] = parse_value(key, text)
            except ValueError:
                problems.append(f"--set {item}: expected {_WANTED.get(fields[key], 'text')}")
    try:
        recipe = dataclasses.replace(recipe, **changes)
    except UsageError as e:
        problems.append(str(e))     # the values that parsed, checked as the Recipe checks them
    if problems:
        raise UsageError("; ".join(problems))
    return recipe


def parse_flags(flags, label):
    """The `--recipe NAME` and `--set KEY=VALUE` items of one string (a compare arm, a sweep
    cell, verify's baseline): (the recipe's name or None, the "key=value" texts). Anything
    else is a one-line UsageError beginning with `label`."""
    try:
        words = shlex.split(flags)
    except ValueError as e:
        raise UsageError(f"{label}: {flags!r}: {e}") from None
    name, sets = None, []
    while words:
        word = words.pop(0)
        flag, sep, value = word.partition("=")
        if flag not in ("--recipe", "--set"):
            raise UsageError(f"{label}: {word!r} is not --recipe NAME or --set KEY=VALUE")
        if not sep:
            if not words:
                raise UsageError(f"{label}: {flag} needs a value")
            value = words.pop(0)
        if flag == "--recipe":
            name = value
        else:
            sets.append(value)
    return name, sets


def flags_recipe(flags, base, label):
    """(recipe, the --set texts) of a flags string (parse_flags): `--recipe` names the recipe
    it starts from, else it is `base` (a name)."""
    name, sets = parse_flags(flags, label)
    try:
        return override(get_recipe(name or base), sets), sets
    except UsageError as e:
        raise UsageError(f"{label}: {e}") from None


def script_recipe(argv):
    """A script's `[RECIPE] [key=value ...]` arguments as a recipe (recipe 94 by default); a
    mistake is one line on stderr and exit status 2."""
    try:
        return override(get_recipe(argv[0] if argv else "94"), argv[1:])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
