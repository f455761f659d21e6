import dataclasses

import pytest

from hlb.errors import UsageError
from hlb.recipes import RECIPES, Recipe, get_recipe, override


def test_recipe_94_is_the_paper_method():
    r = RECIPES["94"]
    assert (r.batch_size, r.epochs, r.widths, r.lr, r.momentum) == (1024, 9.9, (64, 256, 256),
                                                                    11.5, 0.85)
    assert r.steps_per_epoch() == 48 and r.total_steps() == 476
    assert r.flip == "alternate" and r.translate == 2 and r.tta_level == 2


def test_total_steps_rounds_up_but_not_whole_epochs():
    r = override(RECIPES["smoke"], ["epochs=2"])
    assert r.total_steps() == 2 * r.steps_per_epoch()
    r = override(RECIPES["smoke"], ["epochs=1.01"])
    assert r.total_steps() == r.steps_per_epoch() + 1


def test_override_parses_each_type():
    r = override(RECIPES["94"], ["epochs=8", "batch_size=512", "half=false",
                                 "widths=32,64,64", "flip=random"])
    assert r.epochs == 8.0 and isinstance(r.epochs, float)
    assert r.batch_size == 512 and r.half is False and r.widths == (32, 64, 64)
    assert r.flip == "random"
    assert RECIPES["94"].epochs == 9.9          # the named recipe is untouched


@pytest.mark.parametrize("item, message", [
    ("nope=1", "unknown key 'nope'; valid keys: batch_size"),
    ("epochs", "expected key=value"),
    ("batch_size=1.5", "expected an integer"),
    ("lr=fast", "expected a number"),
    ("half=maybe", "expected true or false"),
    ("widths=1,2", "3 comma-separated integers"),
    ("epochs=-1", "epochs must be positive"),
    ("flip=sideways", "flip must be alternate, random or none"),
    ("batch_size=60000", "batch_size must not exceed train_images"),
    ("name=x", "unknown key 'name'"),
])
def test_bad_overrides_are_one_line_usage_errors(item, message):
    with pytest.raises(UsageError) as e:
        override(RECIPES["94"], [item])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(UsageError, match="choose one of: 94, smoke"):
        get_recipe("93")


def test_every_field_has_a_default_except_the_name():
    assert Recipe(name="x").widths == (64, 256, 256)


@pytest.mark.parametrize("name", list(RECIPES))
def test_named_recipes_use_the_declared_types(name):
    # A named recipe with epochs=2 instead of 2.0 would make `--set epochs=1.5` fail.
    recipe = RECIPES[name]
    for f in dataclasses.fields(recipe):
        assert type(getattr(recipe, f.name)) is f.type, f.name
