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


def flip_where(images, mask):
    """Mirror (along the width axis) the images whose mask entry is True."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


def random_crop(padded, size, generator=None):
    """One random size x size window per image from a padded NCHW batch."""
    n, _, h, w = padded.shape
    dy = torch.randint(0, h - size + 1, (n,), device=padded.device, generator=generator)
    dx = torch.randint(0, w - size + 1, (n,), device=padded.device, generator=generator)
    offsets = torch.arange(size, device=padded.device)
    rows = (dy[:, None] + offsets)[:, None, :, None]          # N, 1, size, 1
    cols = (dx[:, None] + offsets)[:, None, None, :]          # N, 1, 1, size
    batch = torch.arange(n, device=padded.device)[:, None, None, None]
    channel = torch.arange(padded.shape[1], device=padded.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


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

    Flip "alternate" draws one random flip per image for the run and inverts it on every odd
    epoch, so each image is seen in both orientations in turn; it needs fewer epochs than
    flipping at random each epoch. `cutout` > 0 zeroes a square of that side in each image.
    """

    def __init__(self, images, labels, batch_size, flip, translate, generator=None, cutout=0):
        self.labels = labels
        self.batch_size = batch_size
        self.flip = flip
        self.translate = translate
        self.cutout_size = cutout
        self.generator = generator
        pad = (translate,) * 4
        # Pad once per run; each epoch only picks a window.
        self.padded = F.pad(images, pad, mode="reflect") if translate else images
        self.size = images.shape[-1]
        self.base_flip = self._coin(len(images))

    def _coin(self, n):
        device = self.labels.device
        return torch.rand(n, device=device, generator=self.generator) < 0.5

    def __len__(self):
        return len(self.labels) // self.batch_size

    def epoch(self, epoch):
        order = torch.randperm(len(self.labels), device=self.labels.device,
                               generator=self.generator)
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.padded[index]
            if self.translate:
                images = random_crop(images, self.size, self.generator)
            if self.flip == "alternate":
                images = flip_where(images, self.base_flip[index] ^ bool(epoch % 2))
            elif self.flip == "random":
                images = flip_where(images, self._coin(len(index)))
            if self.cutout_size:
                images = cutout(images, self.cutout_size, self.generator)
            yield images, self.labels[index]
