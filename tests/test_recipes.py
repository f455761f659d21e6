import dataclasses
from pathlib import Path

import pytest

from conftest import synthetic_cifar
from hlb.bench.overrides import override
from hlb.bench.runs import run_recipe
from hlb.errors import UsageError
from hlb.model import Net
from hlb.optim import WhiteningBiasFreeze, lr_multiplier
from hlb.recipes import RECIPES, Recipe, from_decoupled, get_recipe


def test_recipe_94sgd_is_the_paper_method():
    r = RECIPES["94sgd"]
    assert (r.batch_size, r.epochs, r.widths, r.momentum) == (1024, 9.9, (64, 256, 256), 0.85)
    # airbench94's hyp: lr 11.5 and decay 0.0153 per 1024 examples, biases at 64x.
    assert r.head_lr == r.whiten_bias_lr == pytest.approx(11.5 / (1024 * (1 + 1 / 0.15)))
    assert r.bias_lr == pytest.approx(64 * r.head_lr)
    assert r.weight_decay == pytest.approx(0.0153 * 1024 / (1024 * (1 + 1 / 0.15)))
    assert r.steps_per_epoch() == 48 and r.total_steps() == 476
    assert r.optimizer == "sgd" and r.lookahead_every == 5 and r.tta_fraction == 1.0
    assert r.augment == ("crop", "flip") and r.flip == "alternate" and r.translate == 2
    assert r.tta_level == 2 and not (r.compile or r.capture_step)


def test_total_steps_rounds_up_but_not_whole_epochs():
    r = override(RECIPES["smoke"], ["epochs=2"])
    assert r.total_steps() == 2 * r.steps_per_epoch()
    r = override(RECIPES["smoke"], ["epochs=1.01"])
    assert r.total_steps() == r.steps_per_epoch() + 1


def test_override_parses_each_type():
    r = override(RECIPES["94"], ["epochs=9", "batch_size=512", "channels_last=false",
                                 "widths=32,64,64", "flip=random", "augment=crop, flip,jitter",
                                 "image_sizes=24,32"])
    assert r.epochs == 9.0 and isinstance(r.epochs, float)
    assert r.batch_size == 512 and r.channels_last is False and r.widths == (32, 64, 64)
    assert r.flip == "random" and r.augment == ("crop", "flip", "jitter")
    assert r.image_sizes == (24, 32)
    assert RECIPES["94"].epochs == 8.0          # the named recipe is untouched


@pytest.mark.parametrize("item, message", [
    ("nope=1", "unknown key 'nope'; valid keys: activation, augment, batch_size"),
    ("epochs", "expected key=value"),
    ("batch_size=1.5", "expected an integer"),
    ("head_lr=fast", "expected a number"),
    ("channels_last=maybe", "expected true or false"),
    ("widths=1,2", "3 comma-separated integers"),
    ("epochs=-1", "epochs=-1.0: expected a number in (0, 1000]"),
    ("flip=sideways", "flip='sideways': expected one of alternate, random"),
    ("augment=crop,crop", "augment=('crop', 'crop'): expected comma-separated names, each "
                          "once, from: crop, flip, cutout, jitter"),
    ("image_sizes=8,32", "image_sizes=(8, 32): expected 1 to 16 comma-separated integers "
                         "from 16 to 32"),
    ("image_sizes=a", "--set image_sizes=a: expected comma-separated values"),
    ("batch_size=60000", "batch_size=60000: expected an integer from 1 to 50000"),
    ("name=x", "unknown key 'name'"),
])
def test_bad_overrides_are_one_line_usage_errors(item, message):
    with pytest.raises(UsageError) as e:
        override(RECIPES["94"], [item])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(UsageError, match="choose one of: 94, 94sgd, 94tuned, 95, 96, smoke"):
        get_recipe("93")


@pytest.mark.parametrize("name", list(RECIPES))
def test_named_recipes_use_the_declared_types(name):
    # A named recipe with epochs=2 instead of 2.0 would make `--set epochs=1.5` fail.
    recipe = RECIPES[name]
    for f in dataclasses.fields(recipe):
        assert type(getattr(recipe, f.name)) is f.type, f.name


def test_an_edit_to_94_changes_94_alone(monkeypatch):
    """Recipes are written whole (or from one named parent), so a value of 94 changed where 94
    is written leaves every other recipe as it was."""
    import hlb.recipes
    before = {name: r.to_dict() for name, r in RECIPES.items()}
    source = Path(hlb.recipes.__file__).read_text()
    edited = source.replace("label_smoothing=0.2, schedule=\"linear\", warmup_frac=0.0", 
                            "label_smoothing=0.3, schedule=\"linear\", warmup_frac=0.0", 1)
    assert edited != source, "recipe 94's line moved: update this test"
    namespace = {"__name__": "edited_recipes"}
    exec(compile(edited, hlb.recipes.__file__, "exec"), namespace)
    after = {name: r.to_dict() for name, r in namespace["RECIPES"].items()}
    assert after["94"]["label_smoothing"] == 0.3
    assert {k: v for k, v in after["94"].items() if k != "label_smoothing"} == \
        {k: v for k, v in before["94"].items() if k != "label_smoothing"}
    assert {name: d for name, d in after.items() if name != "94"} == \
        {name: d for name, d in before.items() if name != "94"}


def test_every_named_recipe_sets_every_field():
    # No defaults to inherit: a Recipe built without a value is a TypeError, not recipe 94.
    with pytest.raises(TypeError):
        Recipe(name="x")
    for name in ("94", "94sgd", "smoke"):
        assert "cutout" not in RECIPES[name].augment and RECIPES[name].convs_per_group == 2


def test_recipe_95_is_94sgd_wider_and_longer():
    expected = dataclasses.replace(RECIPES["94sgd"], name="95", target=0.95,
                                   widths=(128, 384, 384), epochs=15.0,
                                   **from_decoupled(10.0, 0.85, 0.0153, 1024, 64))
    assert RECIPES["95"] == expected
    assert RECIPES["95"].total_steps() == 15 * 48


def test_recipe_96_is_the_june_2024_airbench96():
    r = RECIPES["96"]
    assert (r.widths, r.convs_per_group, r.bn_momentum) == ((128, 384, 512), 3, 0.1)
    assert (r.head_lr, r.weight_decay) == pytest.approx(
        (9.0 / (1024 * (1 + 1 / 0.15)), 0.012 * 1024 / (1024 * (1 + 1 / 0.15))))
    assert r.epochs == 37.0
    assert (r.translate, r.cutout, r.flip) == (4, 12, "alternate")
    assert r.augment == ("crop", "flip", "cutout") and r.target == 0.96
    steps = r.total_steps()
    assert steps == 37 * 48
    schedule = [lr_multiplier(s, steps, r) for s in range(steps + 1)]
    # Warm-up from 0.2x over the first 10% of steps, then a decay all the way to zero.
    assert schedule[0] == 0.2 and schedule[int(0.1 * steps)] == 1.0
    assert max(schedule) == 1.0 and schedule[-1] == 0.0


@pytest.mark.parametrize("item, message", [
    ("cutout=0", "cutout=0: expected an integer from 1 to 32"),
    ("cutout=33", "cutout=33: expected an integer from 1 to 32"),
    ("convs_per_group=4", "convs_per_group=4: expected one of 2, 3"),
    ("compile_mode=fast", "compile_mode='fast': expected one of default, reduce-overhead"),
    ("tta_fraction=0", r"tta_fraction=0.0: expected a number in \(0, 1\]"),
    ("precision=fp8", "precision='fp8': expected one of fp16, bf16, fp32"),
    ("tta_fraction=1.5", r"tta_fraction=1.5: expected a number in \(0, 1\]"),
    ("label_smoothing=1.5", r"label_smoothing=1.5: expected a number in \[0, 1\]"),
    ("whiten_kernel=40", "whiten_kernel=40: expected an integer from 1 to 25"),
    ("head_lr=-1", "head_lr=-1.0: expected a number in"),
    ("lr=0.1", "lr is gone: learning rates are now plain rates per step .* set head_lr"),
    ("epochs=inf", "epochs=inf: expected a number in"),
    ("bn_eps=0", "bn_eps=0.0: expected a number in"),
])
def test_bad_new_fields_are_usage_errors(item, message):
    with pytest.raises(UsageError, match=message):
        override(RECIPES["96"], [item])


@pytest.mark.parametrize("name", ["95", "96"])
def test_wide_recipes_learn_at_tiny_scale(name):
    recipe = override(RECIPES[name], [
        "train_images=512", "test_images=128", "batch_size=64", "epochs=3.0",
        "widths=16,32,32", "whiten_init_images=256", "eval_batch_size=128"])
    record = run_recipe(recipe, runs=1, device="cpu", seed=0, cifar=synthetic_cifar())
    result = record.results[0]
    assert not result.diverged
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.tta_acc > 0.2                            # chance is 0.1


def test_recipe_94_is_the_muon_method_captured_compiled_with_selective_tta():
    r = RECIPES["94"]
    assert r.optimizer == "muon" and r.total_steps() == 200 and r.lookahead_every == 0
    # airbench94_muon's values, as it writes them.
    assert (r.bias_lr, r.whiten_bias_lr, r.muon_lr) == (0.053, 0.053, 0.24)
    assert (r.momentum, r.muon_momentum, r.label_smoothing) == (0.85, 0.6, 0.2)
    assert r.weight_decay == 2e-6 * r.batch_size                # 0.004 per step at the peak
    # Its head_lr 0.67 on logits / 256 moves the logits as ours does on logits x 1/9.
    assert r.head_lr * r.logit_scale**2 == pytest.approx(0.67 / 256**2, rel=0.001)
    assert r.whiten_bias_own_schedule and WhiteningBiasFreeze(Net(r), r).steps == 75
    assert r.capture_step and r.compile and r.tta_fraction == 0.25 and r.target == 0.94


def test_recipe_94tuned_carries_hiverges_tuning_in_our_units():
    r = RECIPES["94tuned"]
    assert r.total_steps() == 245 and WhiteningBiasFreeze(Net(r), r).steps == 7
    # hiverge's per-step values: head 0.5415 (against airbench94_muon's 0.67, which is
    # recipe 94's head lr in our form), biases 0.0573, decay 1.0418e-6 x 1536.
    assert r.head_lr / RECIPES["94"].head_lr == pytest.approx(0.5415 / 0.67, rel=0.01)
    assert r.bias_lr == r.whiten_bias_lr == 0.0573
    assert r.weight_decay == pytest.approx(1.0418e-6 * 1536, rel=0.01)
    assert (r.muon_lr, r.muon_momentum, r.label_smoothing) == (0.205, 0.655, 0.09)
    assert r.activation == "silu" and "jitter" in r.augment and r.whiten_init_images == 960
    assert 1 - r.bn_momentum == pytest.approx(0.5566)       # airbench's convention


def test_rules_between_fields_name_both():
    with pytest.raises(UsageError, match=r"batch_size=20000: expected at most train_images "
                                         r"\(10000\)"):
        override(RECIPES["smoke"], ["batch_size=20000"])
    with pytest.raises(UsageError, match="whiten_init_images=20000: expected at most "
                                         "train_images"):
        override(RECIPES["smoke"], ["whiten_init_images=20000"])


def test_every_problem_is_named_in_one_line():
    with pytest.raises(UsageError) as e:
        override(RECIPES["94"], ["head_lr=fast", "epochs=nan", "flip=up"])
    text = str(e.value)
    assert "\n" not in text and all(key in text for key in ("head_lr=", "epochs=", "flip="))


def test_a_recipe_built_in_code_is_checked_too():
    def x(**values):
        return dataclasses.replace(RECIPES["94"], name="x", **values)
    with pytest.raises(UsageError, match="recipe 'x': momentum=1.0: expected"):
        x(momentum=1.0)
    with pytest.raises(UsageError, match="widths=\\(8, 8\\): expected 3 comma-separated"):
        x(widths=(8, 8))
    with pytest.raises(UsageError, match="epochs=True: expected a number"):
        x(epochs=True)
    assert x(epochs=3).epochs == 3.0              # an int is taken for a float
    assert type(x(epochs=3).epochs) is float


def test_from_decoupled_is_the_old_conversion_and_keeps_the_sgd_recipes_exact():
    plain = from_decoupled(lr=11.5, momentum=0.85, weight_decay=0.0153, batch_size=1024,
                           bias_scaler=64)
    examples = 1024 * (1 + 1 / (1 - 0.85))
    assert plain == dict(head_lr=11.5 / examples, bias_lr=11.5 / examples * 64,
                         whiten_bias_lr=11.5 / examples, momentum=0.85,
                         weight_decay=0.0153 * 1024 / examples)
    # The same step size under another momentum: the decoupled form's point.
    slow = from_decoupled(11.5, 0.9, 0.0153, 1024, 64)
    assert slow["head_lr"] / plain["head_lr"] == pytest.approx((1 + 1 / 0.15) / (1 + 1 / 0.1))
    # A momentum changed by --set changes only the momentum now.
    changed = override(RECIPES["94"], ["momentum=0.9"])
    assert (changed.head_lr, changed.bias_lr) == (RECIPES["94"].head_lr, RECIPES["94"].bias_lr)
