"""Hostile values for every Recipe field, generated from the fields themselves: a field added
later is covered without anyone remembering to, and one without a declared range fails here."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hlb.bench.cli import main
from hlb.bench.overrides import override, settable
from hlb.errors import UsageError
from hlb.recipes import RECIPES, Recipe

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ["-1", "0", "1", "-0.5", "0.5", "1e-320", "1e308", "1e400", "99999999999999999999",
           "nan", "inf", "-inf", "", " ", "abc", "true", "1,2", "1,2,3", "1,2,3,4", "0,0,0",
           "-1,8,8", "8,8,99999", "None", "[1]", "\x00", "1" * 400]
FIELDS = [f for f in dataclasses.fields(Recipe) if f.name != "name"]


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_each_field_declares_what_it_allows(field):
    allowed = field.metadata.get("allowed")
    assert allowed is not None, (f"Recipe field {field.name} declares no range: write it as "
                                 f"`{field.name}: {field.type.__name__} = knob(allowed)`")
    assert allowed.describe(field.type)
    for name, recipe in RECIPES.items():
        assert allowed.allows(getattr(recipe, field.name)), f"recipe {name}'s value"


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_hostile_text_is_accepted_or_one_line_naming_the_key(field):
    for name in ("94", "smoke"):
        for text in HOSTILE:
            try:
                recipe = override(RECIPES[name], [f"{field.name}={text}"])
            except UsageError as e:
                assert field.name in str(e) and "\n" not in str(e), (text, str(e))
            else:
                assert isinstance(recipe, Recipe)
                assert recipe.total_steps() >= 1 and recipe.steps_per_epoch() >= 1


def test_settable_is_every_field_but_the_name():
    assert set(settable()) == {f.name for f in FIELDS}


def test_hostile_values_stop_the_command_line_before_the_data(tmp_path, capsys):
    for field in FIELDS:
        assert main(["--set", f"{field.name}=nan", "--data-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and field.name in err
    assert list(tmp_path.iterdir()) == []


def test_every_field_hostile_at_once_through_main_py(tmp_path):
    sets = [arg for f in FIELDS for arg in ("--set", f"{f.name}=nan")]
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), *sets,
                             "--data-dir", str(tmp_path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line, = result.stderr.strip().splitlines()
    assert all(f"{f.name}=" in line for f in FIELDS)
    assert list(tmp_path.iterdir()) == []
