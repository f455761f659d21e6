"""The training data on the device: normalisation, per-epoch augmentation, shuffled batches.

Everything stays on the device; a batch is an index into tensors that are already there, so no
DataLoader or host copy sits in the training loop.
"""

import torch
import torch.nn.functional as F

# Per-channel statistics of the CIFAR-10 training set, on the 0-1 scale.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def normalize(images_uint8, dtype):
    """uint8 NCHW -> normalised floats of `dtype` (converting on the device is faster than
    storing floats)."""
    mean = torch.tensor(CIFAR_MEAN, device=images_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=images_uint8.device).view(1, 3, 1, 1)
    return ((images_uint8.float() / 255 - mean) / std).to(dtype)


def random_crop(padded, size, flip=None, generator=None):
    """One random size x size window per image of a padded NCHW batch, mirrored along the
    width where `flip` (a bool per image) is True.

    The window is picked by one whole-batch select per possible offset along each axis: no
    index tensor as large as the images (a gather's takes 8 bytes per pixel: 1.2 GB for the
    training set, which put 94muon over a 4 GiB cap).
    """
    n, _, h, w = padded.shape
    dy = torch.randint(0, h - size + 1, (n, 1), device=padded.device, generator=generator)
    dx = torch.randint(0, w - size + 1, (n, 1), device=padded.device, generator=generator)
    out = _window(_window(padded, dy, size, dim=2), dx, size, dim=3)
    if flip is not None:
        out = torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)
    return out


def _window(images, start, size, dim):
    """images.narrow(dim, start[i], size) for each image i, for a per-image `start`."""
    out = images.narrow(dim, 0, size).clone()
    for offset in range(1, images.size(dim) - size + 1):
        chosen = (start == offset).view(-1, 1, 1, 1)
        torch.where(chosen, images.narrow(dim, offset, size), out, out=out)
    return out


def cutout(images, size, generator=None):
    """Zero one size x size square per image, at a random position, in every channel.

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
    return images.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0)


class TrainBatches:
    """Shuffled, augmented batches of the training set, one epoch per `epoch(e)` call.

    Each epoch augments the whole set at once (a new window and flip per image, then cutout),
    so a training step only gathers its batch: a few large kernels per epoch instead of a
    dozen small ones per step.

    Flip "alternate" draws one random flip per image for the run and inverts it on every odd
    epoch, so each image is seen in both orientations in turn; it needs fewer epochs than
    flipping at random each epoch. `cutout` > 0 zeroes a square of that side in each image.
    """

    def __init__(self, images, labels, batch_size, flip, translate, generator=None, cutout=0,
                 memory_format=torch.contiguous_format):
        self.labels = labels
        self.memory_format = memory_format       # of the batches: channels-last on a GPU
        self.batch_size = batch_size
        self.flip = flip
        self.cutout_size = cutout
        self.generator = generator
        # Pad once per run; each epoch only picks a window.
        self.padded = F.pad(images, (translate,) * 4, mode="reflect") if translate else images
        self.size = images.shape[-1]
        self.base_flip = self._coin(len(images))

    def _coin(self, n):
        device = self.labels.device
        return torch.rand(n, device=device, generator=self.generator) < 0.5

    def __len__(self):
        return len(self.labels) // self.batch_size

    def augmented(self, epoch):
        """The whole training set as seen in `epoch`, in the batches' memory format."""
        flip = None
        if self.flip == "alternate":
            flip = self.base_flip ^ bool(epoch % 2)
        elif self.flip == "random":
            flip = self._coin(len(self.labels))
        images = random_crop(self.padded, self.size, flip, self.generator)
        if self.cutout_size:
            images = cutout(images, self.cutout_size, self.generator)
        # Once per epoch here, so a batch (a gather along the first axis) keeps the format.
        return images.contiguous(memory_format=self.memory_format)

    def epoch(self, epoch):
        """The epoch's augmented images, and the indices of each step's batch (one row per
        step, a shuffled partition of the set without the remainder)."""
        images = self.augmented(epoch)
        order = torch.randperm(len(self.labels), device=self.labels.device,
                               generator=self.generator)
        return images, order[:len(self) * self.batch_size].view(len(self), self.batch_size)
