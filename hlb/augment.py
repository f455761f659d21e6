"""The training data on the device: normalisation, the per-epoch augmentations, shuffled batches.

Everything stays on the device; a batch is an index into tensors that are already there, so no
DataLoader or host copy sits in the training loop.

An augmentation is a function `(images, epoch, batches) -> images` over the whole training
set, registered by name with @augmentation; a recipe lists the ones it uses, in order
(`augment`). Adding one is that function and its name in the list (README.md, "Adding an
augmentation").
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Per-channel statistics of the CIFAR-10 training set, on the 0-1 scale.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

AUGMENTATIONS = {}        # name -> function(images, epoch, batches)
TEST_LIKE = {"flip"}      # the test-time views include mirror images, so clean epochs keep it


def augmentation(transform):
    """Register `transform` under its function's name, for a recipe's `augment` list."""
    AUGMENTATIONS[transform.__name__] = transform
    return transform


@dataclass
class DeviceData:
    """The chosen images, still uint8, already on the device (loading is not timed)."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def to_device(cifar, recipe, device):
    def put(t, n):
        return t[:n].to(device, non_blocking=True)
    return DeviceData(put(cifar.train_images, recipe.train_images),
                      put(cifar.train_labels, recipe.train_images),
                      put(cifar.test_images, recipe.test_images),
                      put(cifar.test_labels, recipe.test_images))


# Whole-set passes (normalising, the crop, the flip) go this many images at a time, so their
# temporaries are a chunk's (117 MiB of fp32 here) and never the set's: the same kernels and
# bytes, a few more launches, and hundreds of MiB less at the peak on a GPU.
CHUNK_IMAGES = 10_000


def _chunks(n, chunk):
    return (slice(start, start + chunk) for start in range(0, n, chunk))


def normalize(images_uint8, dtype, memory_format=torch.contiguous_format, chunk=CHUNK_IMAGES):
    """uint8 NCHW -> normalised floats of `dtype` in `memory_format` (converting on the device
    is faster than storing floats).

    The arithmetic is fp32, ((x / 255) - mean) / std, on one chunk of images at a time,
    written straight into the result in its dtype and memory format: no fp32 copy of the
    whole set and no second copy for the layout, the same values.
    """
    mean = torch.tensor(CIFAR_MEAN, device=images_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=images_uint8.device).view(1, 3, 1, 1)
    out = torch.empty(images_uint8.shape, dtype=dtype, device=images_uint8.device,
                      memory_format=memory_format)
    for part in _chunks(len(images_uint8), chunk):
        out[part] = images_uint8[part].float().div_(255).sub_(mean).div_(std)
    return out


def random_crop(padded, size, generator=None, chunk=CHUNK_IMAGES):
    """One random size x size window per image of a padded NCHW batch, in its memory format.

    The window is picked by one whole-batch select per possible offset along each axis: no
    index tensor as large as the images (a gather's takes 8 bytes per pixel: 1.2 GB for the
    training set, which put 94muon over a 4 GiB cap). The rows are picked a chunk of images
    at a time, so only a chunk's worth of the in-between (size x padded width) copy exists.
    """
    n, c, h, w = padded.shape
    dy = torch.randint(0, h - size + 1, (n, 1), device=padded.device, generator=generator)
    dx = torch.randint(0, w - size + 1, (n, 1), device=padded.device, generator=generator)
    out = torch.empty((n, c, size, size), dtype=padded.dtype, device=padded.device,
                      memory_format=_format_of(padded))
    for part in _chunks(n, chunk):
        rows = _window(padded[part], dy[part], size, dim=2)
        _window(rows, dx[part], size, dim=3, out=out[part])
    return out


def _format_of(images):
    channels_last = images.dim() == 4 and not images.is_contiguous() and \
        images.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _window(images, start, size, dim, out=None):
    """images.narrow(dim, start[i], size) for each image i, for a per-image `start` (into
    `out` if given)."""
    if out is None:
        out = images.narrow(dim, 0, size).clone()
    else:
        out.copy_(images.narrow(dim, 0, size))
    for offset in range(1, images.size(dim) - size + 1):
        chosen = (start == offset).view(-1, 1, 1, 1)
        torch.where(chosen, images.narrow(dim, offset, size), out, out=out)
    return out


def mirror(images, chosen, in_place=False, chunk=CHUNK_IMAGES):
    """The images mirrored along the width where `chosen` (a bool per image) is True, in a
    new tensor or `in_place`. A chunk of images at a time, so the mirrored copy that the
    select reads is a chunk's, not the set's."""
    out = images if in_place else torch.empty_like(images)
    for part in _chunks(len(images), chunk):
        x = images[part]
        torch.where(chosen[part].view(-1, 1, 1, 1), x.flip(-1), x, out=out[part])
    return out


def zero_square(images, size, generator=None, in_place=False):
    """Zero one size x size square per image, at a random position, in every channel (in a
    new tensor or `in_place`).

    Zero is the dataset mean once images are normalised.
    """
    n, _, h, w = images.shape
    # Kept inside the image, so every image loses the same size*size pixels (as airbench96 does).
    top = torch.randint(0, h - size + 1, (n, 1), device=images.device, generator=generator)
    left = torch.randint(0, w - size + 1, (n, 1), device=images.device, generator=generator)
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    in_rows = (rows >= top) & (rows < top + size)                 # N, H
    in_cols = (cols >= left) & (cols < left + size)               # N, W
    square = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return images.masked_fill_(square, 0) if in_place else images.masked_fill(square, 0)


# The augmentations a recipe can list, each reading its own knobs from the recipe.

@augmentation
def crop(images, epoch, batches):
    """A random shift of up to `translate` pixels each way: a window of the image's size from
    the reflect-padded copy that TrainBatches keeps (so the crop comes first)."""
    return random_crop(images, batches.side, batches.generator)


@augmentation
def flip(images, epoch, batches):
    """Mirror images. "alternate" draws one random flip per image for the run and inverts it
    on every odd epoch, so each image is seen in both orientations in turn (fewer epochs are
    needed than with "random", a new coin per image each epoch)."""
    if batches.recipe.flip == "alternate":
        chosen = batches.base_flip ^ bool(epoch % 2)
    else:
        chosen = batches.coin(len(images))
    return mirror(images, chosen, in_place=batches.writable(images))


@augmentation
def cutout(images, epoch, batches):
    """Zero a `cutout` x `cutout` square in each image, a new place each epoch."""
    return zero_square(images, batches.recipe.cutout, batches.generator,
                       in_place=batches.writable(images))


@augmentation
def jitter(images, epoch, batches):
    """Per image, shift the brightness by up to `jitter_brightness` and scale the contrast
    by up to `jitter_contrast` either way, on the normalised images (so contrast scales about
    the dataset mean). The idea and its strengths come from hiverge's cifar10-speedrun."""
    n, recipe = len(images), batches.recipe
    shift = (batches.uniform(n) * 2 - 1) * recipe.jitter_brightness
    scale = 1 + (batches.uniform(n) * 2 - 1) * recipe.jitter_contrast
    shift, scale = shift.to(images.dtype), scale.to(images.dtype)
    if batches.writable(images):
        return images.add_(shift).mul_(scale)
    return (images + shift) * scale


class TrainBatches:
    """Shuffled, augmented batches of the training set, one epoch per `epoch(e)` call.

    Each epoch runs the recipe's augmentations over the whole set at once, so a training step
    only gathers its batch: a few large kernels per epoch instead of a dozen small ones per
    step. In the last `clean_epochs` epochs only the flip runs (the images as the test-time
    views see them).
    """

    def __init__(self, images, labels, recipe, memory_format=torch.contiguous_format,
                 generator=None):
        self.labels = labels
        self.recipe = recipe
        self.batch_size = recipe.batch_size
        self.memory_format = memory_format       # of the batches: channels-last on a GPU
        self.generator = generator
        self.side = images.shape[-1]
        # The crop reads a padded copy, made once per run; nothing else keeps the images.
        pad = recipe.translate if "crop" in recipe.augment else 0
        self.source = F.pad(images, (pad,) * 4, mode="reflect") if pad else images
        self.base_flip = self.coin(len(images))
        self.clean_from = recipe.epoch_count() - recipe.clean_epochs

    def uniform(self, n):
        """n draws from U(0, 1), one per image, shaped to broadcast over NCHW images."""
        return torch.rand(n, 1, 1, 1, device=self.labels.device, generator=self.generator)

    def coin(self, n):
        return torch.rand(n, device=self.labels.device, generator=self.generator) < 0.5

    def __len__(self):
        return len(self.labels) // self.batch_size

    def writable(self, images):
        """Whether an augmentation may overwrite `images` in place: True for a tensor made
        this epoch (the crop's), False for the kept source or a view of it."""
        return images.untyped_storage().data_ptr() != self.source.untyped_storage().data_ptr()

    def augmented(self, epoch):
        """The whole training set as seen in `epoch`, in the batches' memory format."""
        clean = epoch >= self.clean_from
        images = self.source
        if clean:           # no crop: the centre (the flip, all that runs, commutes with it)
            pad = (images.shape[-1] - self.side) // 2
            images = images[..., pad:pad + self.side, pad:pad + self.side]
        for name in self.recipe.augment:
            if not clean or name in TEST_LIKE:
                images = AUGMENTATIONS[name](images, epoch, self)
        # Once per epoch here, so a batch (a gather along the first axis) keeps the format.
        return images.contiguous(memory_format=self.memory_format)

    def epoch(self, epoch):
        """The epoch's augmented images, and the indices of each step's batch (one row per
        step, a shuffled partition of the set without the remainder)."""
        images = self.augmented(epoch)
        order = torch.randperm(len(self.labels), device=self.labels.device,
                               generator=self.generator)
        return images, order[:len(self) * self.batch_size].view(len(self), self.batch_size)
