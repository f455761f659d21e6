import textwrap
from pathlib import Path

import pytest
import torch

from hlb.augment import (AUGMENTATIONS, TrainBatches, augmentation, mirror, normalize,
                         random_crop, zero_square)
from hlb.bench.overrides import override
from hlb.errors import UsageError
from hlb.recipes import RECIPES


def recipe_for(n, batch_size, *sets):
    """The smoke recipe cut to `n` training images in batches of `batch_size`."""
    return override(RECIPES["smoke"], [f"train_images={n}", f"batch_size={batch_size}",
                                       f"whiten_init_images={n}", *sets])


def test_random_crop_keeps_content_and_covers_all_shifts():
    torch.manual_seed(0)
    x = torch.randn(400, 3, 8, 8)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    out = random_crop(padded, 8)
    assert out.shape == x.shape
    shifts = set()
    for i in range(len(x)):
        # Each output is exactly one 8x8 window of its own padded image.
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert found
        shifts.add(found[0])
    assert len(shifts) == 25


def test_mirror_flips_the_width_axis_only_where_asked():
    x = torch.randn(50, 3, 6, 6)
    chosen = torch.arange(50) % 2 == 0
    out = mirror(x, chosen)
    assert torch.equal(out[chosen], x[chosen].flip(-1))      # width is the last axis
    assert torch.equal(out[~chosen], x[~chosen])


def ramp_images(n):
    """Image i is constant i along height and a ramp along width, so a flip is visible."""
    return torch.arange(8.0).repeat(n, 3, 8, 1) + torch.arange(n).view(n, 1, 1, 1) * 100


def flipped_by_label(batches, labels, epoch):
    state = {}
    images, batch_indices = batches.epoch(epoch)
    for index in batch_indices:
        for img, label in zip(images[index], labels[index]):
            state[int(label)] = bool(img[0, 0, 0] > img[0, 0, -1])
    return state


def test_alternating_flip_inverts_every_other_epoch():
    torch.manual_seed(0)
    n = 64
    labels = torch.arange(n)
    batches = TrainBatches(ramp_images(n), labels, recipe_for(n, 16, "augment=flip"))
    e0, e1, e2 = (flipped_by_label(batches, labels, e) for e in range(3))
    assert len(e0) == n
    assert all(e1[i] != e0[i] for i in range(n))
    assert e2 == e0
    assert 0.2 < sum(e0.values()) / n < 0.8        # the first epoch flips about half


def test_batches_are_a_shuffled_partition_dropping_the_remainder():
    images = torch.randn(100, 3, 8, 8)
    labels = torch.arange(100)
    batches = TrainBatches(images, labels, recipe_for(100, 32, "augment="))
    _, batch_indices = batches.epoch(0)
    assert batch_indices.shape == (3, 32)
    seen = labels[batch_indices.flatten()]
    assert len(batches) == 3 and len(set(seen.tolist())) == 96
    assert not torch.equal(seen, torch.arange(96))


def test_no_augmentation_leaves_the_images_as_they_are():
    images = torch.randn(64, 3, 8, 8)
    batches = TrainBatches(images, torch.arange(64), recipe_for(64, 16, "augment="))
    assert torch.equal(batches.augmented(0), images)


def test_normalize_centres_the_cifar_mean():
    mean = torch.tensor([0.4914, 0.4822, 0.4465]) * 255
    images = mean.view(1, 3, 1, 1).expand(2, 3, 4, 4).round().to(torch.uint8)
    assert normalize(images, torch.float).abs().max() < 0.01


def test_zero_square_zeroes_one_square_inside_each_image_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 3, 8, 10, generator=g) + 1        # no zeros before the cutout
    out = zero_square(x, 3, generator=g)
    zero = out == 0
    assert torch.equal(out[~zero], x[~zero])
    assert (zero.sum(dim=(2, 3)) == 9).all()               # size*size per channel per image
    assert (zero == zero[:, :1]).all()                     # the same square in every channel
    corners = set()
    for square in zero[:, 0]:
        rows = square.any(1).nonzero().flatten()
        cols = square.any(0).nonzero().flatten()
        # 9 zeros in 3 adjacent rows and 3 adjacent columns: exactly one 3x3 square.
        assert len(rows) == 3 and rows[-1] - rows[0] == 2
        assert len(cols) == 3 and cols[-1] - cols[0] == 2
        corners.add((int(rows[0]), int(cols[0])))
    assert len(corners) == 6 * 8                           # every position inside the image


@pytest.mark.parametrize("listed, zeros", [("crop,flip", 0), ("crop,flip,cutout", 16)])
def test_cutout_runs_only_when_listed(listed, zeros):
    images = torch.rand(64, 3, 8, 8) + 1
    batches = TrainBatches(images, torch.arange(64),
                           recipe_for(64, 16, f"augment={listed}", "cutout=4"))
    x, _ = batches.epoch(0)
    assert ((x == 0).sum(dim=(2, 3)) == zeros).all()


def test_jitter_shifts_brightness_and_scales_contrast_per_image_within_its_range():
    torch.manual_seed(0)
    n = 2000
    images = torch.ones(n, 3, 4, 4) * 2
    recipe = recipe_for(n, 100, "augment=jitter", "jitter_brightness=0.1",
                        "jitter_contrast=0.2")
    out = TrainBatches(images, torch.arange(n), recipe).augmented(0)
    per_image = out.flatten(1)
    assert (per_image == per_image[:, :1]).all()       # one shift and one scale per image
    values = per_image[:, 0]
    # (2 + b) * (1 + c) with |b| <= 0.1, |c| <= 0.2: from 1.9 * 0.8 to 2.1 * 1.2.
    assert values.min() >= 1.9 * 0.8 - 1e-6 and values.max() <= 2.1 * 1.2 + 1e-6
    assert values.min() < 1.6 and values.max() > 2.4 and values.std() > 0.1
    zero = TrainBatches(images, torch.arange(n), recipe_for(
        n, 100, "augment=jitter", "jitter_brightness=0", "jitter_contrast=0"))
    assert torch.equal(zero.augmented(0), images)


def test_clean_epochs_keep_the_flip_and_drop_the_crop_and_the_rest():
    torch.manual_seed(0)
    n = 64
    images = ramp_images(n)
    labels = torch.arange(n)
    # 4 steps an epoch, 3 epochs, the last clean.
    recipe = recipe_for(n, 16, "epochs=3", "augment=crop,flip,cutout", "cutout=2",
                        "clean_epochs=1")
    batches = TrainBatches(images, labels, recipe)
    distorted = batches.augmented(0)
    assert not torch.equal(distorted.abs().sort(-1).values, images.sort(-1).values)
    clean = batches.augmented(2)
    assert clean.shape == images.shape
    # Epoch 2 is even: the run's own flips, not inverted; no crop, no cutout.
    assert torch.equal(clean, mirror(images, batches.base_flip))


def test_a_new_augmentation_is_one_function_and_its_name(monkeypatch):
    monkeypatch.setitem(AUGMENTATIONS, "invert", None)     # removed again after the test

    @augmentation
    def invert(images, epoch, batches):
        return -images

    images = torch.rand(64, 3, 8, 8)
    recipe = recipe_for(64, 16, "augment=invert")           # or listed in a named recipe
    assert torch.equal(TrainBatches(images, torch.arange(64), recipe).augmented(0), -images)
    with pytest.raises(UsageError, match="augment=.*invert"):
        recipe_for(64, 16, "augment=invert,invert")          # each name once


def test_the_crop_comes_first_and_names_must_be_known():
    with pytest.raises(UsageError, match="crop first"):
        recipe_for(64, 16, "augment=flip,crop")
    with pytest.raises(UsageError, match="augment=.*expected comma-separated names"):
        recipe_for(64, 16, "augment=crop,rotate")


def test_batches_come_in_the_asked_memory_format():
    images = torch.rand(64, 3, 8, 8)
    labels = torch.arange(64)
    for fmt in (torch.contiguous_format, torch.channels_last):
        recipe = recipe_for(64, 16, "flip=random")
        x, _ = TrainBatches(images, labels, recipe, memory_format=fmt).epoch(0)
        assert x.is_contiguous(memory_format=fmt)


def readme_augmentation():
    """The example augmentation of README.md's "Adding an augmentation", as code."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("**Adding an augmentation.**", 1)[1].split("    @augmentation", 1)[1]
    lines = ["    @augmentation"] + block.split("\n\n", 1)[0].splitlines()[1:]
    return textwrap.dedent("\n".join(lines))


def test_the_readmes_example_augmentation_runs_as_written(monkeypatch):
    source = readme_augmentation()
    name = source.split("def ", 1)[1].split("(", 1)[0]
    monkeypatch.setitem(AUGMENTATIONS, name, None)          # removed again after the test
    exec(source, {"augmentation": augmentation, "torch": torch})
    torch.manual_seed(0)
    images = torch.rand(1000, 3, 8, 8)
    recipe = recipe_for(1000, 100, f"augment=crop,flip,{name}")
    out = TrainBatches(images, torch.arange(1000), recipe).augmented(0)
    grey = (out == out[:, :1]).all(dim=(1, 2, 3))
    assert out.shape == images.shape and 40 < grey.sum() < 180      # about one in ten


# The whole-set passes go a chunk at a time, in place where they may: the same values as the
# plain whole-set formulas (chunks of 7 do not divide the 30 images, so the last is short).

def plain_normalize(images_uint8, dtype, memory_format):
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    return ((images_uint8.float() / 255 - mean) / std).to(dtype).contiguous(
        memory_format=memory_format)


@pytest.mark.parametrize("dtype, fmt", [(torch.float, torch.contiguous_format),
                                        (torch.float16, torch.channels_last)])
def test_normalize_in_chunks_matches_the_plain_formula_bit_for_bit(dtype, fmt):
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    for chunk in (7, 1000):
        out = normalize(images, dtype, fmt, chunk=chunk)
        assert out.dtype == dtype and out.is_contiguous(memory_format=fmt)
        assert torch.equal(out, plain_normalize(images, dtype, fmt))


def test_random_crop_in_chunks_matches_a_slice_per_image():
    x = torch.randn(30, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    out = random_crop(padded, 8, torch.Generator().manual_seed(1), chunk=7)
    g = torch.Generator().manual_seed(1)                    # the same draws, in the same order
    dy, dx = (torch.randint(0, 5, (30, 1), generator=g) for _ in range(2))
    plain = torch.stack([padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(30)])
    assert torch.equal(out, plain)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_mirror_in_chunks_and_in_place_matches_the_whole_set_select():
    x = torch.randn(30, 3, 4, 6)
    chosen = torch.rand(30, generator=torch.Generator().manual_seed(2)) < 0.5
    plain = torch.where(chosen.view(-1, 1, 1, 1), x.flip(-1), x)
    assert torch.equal(mirror(x, chosen, chunk=7), plain)
    y = x.clone()
    assert mirror(y, chosen, in_place=True, chunk=7) is y and torch.equal(y, plain)


def test_zero_square_in_place_matches_a_new_tensor():
    x = torch.rand(30, 3, 8, 8) + 1
    new = zero_square(x, 3, torch.Generator().manual_seed(3))
    y = x.clone()
    assert zero_square(y, 3, torch.Generator().manual_seed(3), in_place=True) is y
    assert torch.equal(y, new) and not torch.equal(x, new)


def plain_epochs(images, recipe, seed, epochs):
    """The augmented sets of recipe's crop, flip, cutout and jitter, written plainly over the
    whole set with the draws TrainBatches makes, in its order."""
    g = torch.Generator().manual_seed(seed)
    n, side = len(images), images.shape[-1]
    base_flip = torch.rand(n, generator=g) < 0.5
    padded = torch.nn.functional.pad(images, (2,) * 4, mode="reflect")
    out = []
    for epoch in range(epochs):
        dy, dx = (torch.randint(0, 5, (n, 1), generator=g) for _ in range(2))
        x = torch.stack([padded[i, :, dy[i]:dy[i] + side, dx[i]:dx[i] + side]
                         for i in range(n)])
        chosen = (base_flip ^ bool(epoch % 2)).view(-1, 1, 1, 1)
        x = torch.where(chosen, x.flip(-1), x)
        x = zero_square(x, recipe.cutout, g)
        shift = (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * recipe.jitter_brightness
        scale = 1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * recipe.jitter_contrast
        out.append((x + shift) * scale)
    return out


def test_the_epochs_match_the_plain_whole_set_augmentations_and_keep_the_source():
    images = torch.randn(40, 3, 8, 8)
    recipe = recipe_for(40, 10, "augment=crop,flip,cutout,jitter", "cutout=3", "epochs=3")
    batches = TrainBatches(images, torch.arange(40), recipe,
                           generator=torch.Generator().manual_seed(4))
    kept = batches.source.clone()
    for epoch, plain in enumerate(plain_epochs(images, recipe, 4, 3)):
        assert torch.equal(batches.augmented(epoch), plain)
    assert torch.equal(batches.source, kept)        # written in place: the crop's copy only


@pytest.mark.parametrize("listed", ["flip", "flip,jitter", "cutout,flip"])
def test_augmentations_without_the_crop_never_write_into_the_images(listed):
    images = torch.rand(40, 3, 8, 8) + 1
    kept = images.clone()
    batches = TrainBatches(images, torch.arange(40), recipe_for(40, 10, f"augment={listed}",
                                                                 "cutout=3"))
    assert not batches.writable(images) and not batches.writable(images[:5])
    for epoch in range(3):
        out = batches.augmented(epoch)
        assert batches.writable(out)
    assert torch.equal(images, kept)
