"""The network: a frozen patch-whitening layer, three conv groups, a max-pooled linear head.

`Net` is the architecture and `ConvGroup` its repeated block: conv, 2x2 max-pool, BN, GELU,
conv, BN, GELU (recipe 96 uses `ResidualConvGroup`). `make_net` only picks the group for a
recipe. Behaviour lives in small subclasses (a BatchNorm with a frozen scale, a conv with
identity init, a conv that skips what the pool drops) rather than in flags.
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
    """3x3 conv, 'same' padding by default, no bias, initialised as a partial identity.

    Why: a random deep network scrambles its input, and early training is spent undoing that.
    Here the first in_channels filters copy their input channel (a 1 at the kernel's centre,
    0 elsewhere), so a fresh network passes its features straight through, behaves like a
    shallow one, and gradients reach the first layers whole; the other filters start random
    and learn new features.
    """

    def __init__(self, channels_in, channels_out, padding="same"):
        super().__init__(channels_in, channels_out, kernel_size=3, padding=padding, bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[: w.size(1)])


class ConvBeforePool(DiracConv):
    """A DiracConv that computes only the outputs a following 2x2 max-pool keeps.

    On an odd-sized map (31, 15, 7) the pool drops the last row and column, so a 'same' conv
    would compute them for nothing (about 11% of the network's FLOPs). Padding the top and left
    by one (the bottom and right too only when the size is even) and convolving without padding
    gives exactly the kept outputs, 31 -> 30, with the same values: the result is unchanged.
    """

    def __init__(self, channels_in, channels_out):
        super().__init__(channels_in, channels_out, padding=0)

    def forward(self, x):
        h, w = x.shape[-2:]
        return super().forward(F.pad(x, (1, 1 - w % 2, 1, 1 - h % 2)))


class ConvGroup(nn.Sequential):
    def __init__(self, channels_in, channels_out, bn_momentum, bn_eps):
        super().__init__(
            ConvBeforePool(channels_in, channels_out),
            nn.MaxPool2d(2),
            BatchNorm(channels_out, bn_momentum, bn_eps),
            nn.GELU(),
            DiracConv(channels_out, channels_out),
            BatchNorm(channels_out, bn_momentum, bn_eps),
            nn.GELU(),
        )


class ResidualConvGroup(nn.Module):
    """ConvGroup with a third conv; the last two convs learn a correction added to their input.

    GELU comes after the add, as in the June-2024 airbench96, whose commit credits this with
    about a 10% speed-up over the paper's GELU before the add.
    """

    def __init__(self, channels_in, channels_out, bn_momentum, bn_eps):
        super().__init__()
        self.entry = nn.Sequential(
            ConvBeforePool(channels_in, channels_out),
            nn.MaxPool2d(2),
            BatchNorm(channels_out, bn_momentum, bn_eps),
            nn.GELU(),
        )
        self.residual = nn.Sequential(
            DiracConv(channels_out, channels_out),
            BatchNorm(channels_out, bn_momentum, bn_eps),
            nn.GELU(),
            DiracConv(channels_out, channels_out),
            BatchNorm(channels_out, bn_momentum, bn_eps),
        )
        self.activation = nn.GELU()

    def forward(self, x):
        x = self.entry(x)
        return self.activation(x + self.residual(x))


class Net(nn.Module):
    def __init__(self, widths, whiten_kernel, bn_momentum, bn_eps, logit_scale,
                 group=ConvGroup):
        super().__init__()
        # Whitening: pixels next to each other are strongly correlated, so a plain first layer
        # sees a few dominant directions and gradient steps crawl along the rest. This layer's
        # filters are fixed from the data (`init_whitening`) to map each small patch to
        # uncorrelated, unit-variance coordinates, so training starts on a well-conditioned
        # input. Each filter comes with its negative, so GELU keeps both signs of a feature.
        # Its bias starts random (PyTorch's default) and trains for a few epochs only.
        whiten_width = 2 * 3 * whiten_kernel**2
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        w1, w2, w3 = widths
        self.body = nn.Sequential(
            nn.GELU(),
            group(whiten_width, w1, bn_momentum, bn_eps),
            group(w1, w2, bn_momentum, bn_eps),
            group(w2, w3, bn_momentum, bn_eps),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(w3, NUM_CLASSES, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x):
        return self.head(self.body(self.whiten(x))) * self.logit_scale


def make_net(recipe):
    """The recipe's Net: plain groups, or residual ones when a group has three convs."""
    group = ResidualConvGroup if recipe.convs_per_group == 3 else ConvGroup
    return Net(recipe.widths, recipe.whiten_kernel, recipe.bn_momentum, recipe.bn_eps,
               recipe.logit_scale, group)


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


PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def compute_dtype(recipe, device):
    """The dtype of weights and activations: the recipe's on a GPU, fp32 on a CPU."""
    return PRECISIONS[recipe.precision] if torch.device(device).type == "cuda" else torch.float


def build_net(recipe, device):
    """The network, placed and cast for `device`. Build once per invocation; `reset` per run."""
    net = make_net(recipe).to(device)
    if torch.device(device).type == "cuda":
        dtype = compute_dtype(recipe, device)
        if dtype != torch.float:
            net.to(dtype)
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.float()          # BatchNorm statistics need fp32
        if recipe.channels_last:
            net.to(memory_format=torch.channels_last)
    return net


def reset(net):
    """Fresh random weights for a new run, written in place (a captured step keeps pointing at
    the same tensors). The whitening bias keeps nn.Conv2d's random init; init_whitening later
    sets the whitening weight from the data."""
    for m in net.modules():
        if m is not net and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def input_memory_format(recipe, device):
    """The layout of the images fed to the network: channels-last on a GPU if the recipe asks."""
    cuda = torch.device(device).type == "cuda"
    return torch.channels_last if cuda and recipe.channels_last else torch.contiguous_format
