"""The network: a frozen patch-whitening layer, three conv groups, a max-pooled linear head.

Behaviour lives in small subclasses (a BatchNorm with a frozen scale, a conv with identity init)
so that `make_net` reads as the architecture and nothing else.
"""

import torch
from torch import nn
import torch.nn.functional as F

NUM_CLASSES = 10


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays at 1: only the bias learns (the next conv can rescale)."""

    def __init__(self, channels, momentum, eps):
        super().__init__(channels, momentum=momentum, eps=eps)
        self.weight.requires_grad = False


class DiracConv(nn.Conv2d):
    """3x3 conv, 'same' padding, no bias, initialised as a partial identity.

    The first in_channels filters pass their input channel straight through, so a fresh network
    starts close to a shallow one and trains faster.
    """

    def __init__(self, channels_in, channels_out):
        super().__init__(channels_in, channels_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Sequential):
    def __init__(self, channels_in, channels_out, bn_momentum, bn_eps):
        super().__init__(
            DiracConv(channels_in, channels_out),
            nn.MaxPool2d(2),
            BatchNorm(channels_out, bn_momentum, bn_eps),
            nn.GELU(),
            DiracConv(channels_out, channels_out),
            BatchNorm(channels_out, bn_momentum, bn_eps),
            nn.GELU(),
        )


class Net(nn.Module):
    def __init__(self, widths, whiten_kernel, bn_momentum, bn_eps, logit_scale):
        super().__init__()
        # Each whitening filter comes with its negative, so GELU keeps both signs of a feature.
        whiten_width = 2 * 3 * whiten_kernel**2
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        nn.init.zeros_(self.whiten.bias)
        w1, w2, w3 = widths
        self.body = nn.Sequential(
            nn.GELU(),
            ConvGroup(whiten_width, w1, bn_momentum, bn_eps),
            ConvGroup(w1, w2, bn_momentum, bn_eps),
            ConvGroup(w2, w3, bn_momentum, bn_eps),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(w3, NUM_CLASSES, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x):
        return self.head(self.body(self.whiten(x))) * self.logit_scale


def make_net(recipe):
    return Net(recipe.widths, recipe.whiten_kernel, recipe.bn_momentum, recipe.bn_eps,
               recipe.logit_scale)


def patches(images, size):
    """All size x size patches of an NCHW batch, flattened to rows of C*size*size values."""
    c = images.shape[1]
    p = images.unfold(2, size, 1).unfold(3, size, 1)          # N, C, H', W', size, size
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * size * size)


def whitening_weights(images, size, eps):
    """Filters that map each patch to decorrelated, unit-variance coordinates.

    They are the eigenvectors of the patch second-moment matrix, each divided by the square
    root of its eigenvalue (plus eps, so near-empty directions are not blown up).
    """
    x = patches(images.float(), size)
    covariance = x.T @ x / len(x)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    filters = eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]
    return filters.reshape(-1, images.shape[1], size, size)


@torch.no_grad()
def init_whitening(net, images, eps):
    filters = whitening_weights(images, net.whiten.kernel_size[0], eps)
    net.whiten.weight.copy_(torch.cat([filters, -filters]))
