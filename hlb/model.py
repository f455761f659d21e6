"""The network: a frozen patch-whitening layer, three conv groups, a max-pooled linear head.

`Net(recipe)` is the architecture and `ConvGroup` its repeated block: conv, 2x2 max-pool,
BatchNorm, activation, conv, BatchNorm, activation (recipe 96 uses `ResidualConvGroup`).
Behaviour lives in small subclasses (a BatchNorm with a frozen scale, a conv with identity
init, a conv that skips what the pool drops) rather than in flags; the BatchNorm settings and
the activation are chosen once, in `Net`, and handed to each group.

Values a recipe may change without changing a shape (the logit scale, BatchNorm's momentum)
are 0-dim tensors, not floats: a compiled network reads them as inputs, so one compile serves
every value (a float would be a constant of the compiled code, compiled again when it changes).
"""

from functools import partial

import torch
from torch import nn
import torch.nn.functional as F

NUM_CLASSES = 10
# The network's activation (after the whitening layer and in the conv groups), by the
# recipe's name for it (`activation`).
ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays at 1: only the bias learns (the next conv can rescale).

    Its `momentum`, the weight of a batch's statistics in the running ones, is a 0-dim tensor
    (see the module's docstring). Torch's batch_norm takes a float, so it is told 1, which
    writes the batch's statistics to `batch_mean` and `batch_var`; the running statistics then
    move toward them by `momentum`: torch's own update, (1 - momentum) * old + momentum * new.
    """

    def __init__(self, channels, momentum, eps):
        super().__init__(channels, eps=eps)
        self.weight.requires_grad = False
        del self.momentum                   # torch's float, replaced by the buffer
        self.register_buffer("momentum", torch.tensor(float(momentum)), persistent=False)
        self.register_buffer("batch_mean", torch.zeros(channels), persistent=False)
        self.register_buffer("batch_var", torch.ones(channels), persistent=False)

    def forward(self, x):
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                eps=self.eps)
        out = F.batch_norm(x, self.batch_mean, self.batch_var, self.weight, self.bias,
                           training=True, momentum=1.0, eps=self.eps)
        self.running_mean.lerp_(self.batch_mean, self.momentum)
        self.running_var.lerp_(self.batch_var, self.momentum)
        return out


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


class GlobalMaxPool(nn.Module):
    """The largest value of each channel's map, as a plain max over the flattened map.

    The same values and gradients as nn.AdaptiveMaxPool2d(1) followed by a flatten, without
    the adaptive pool's backward kernel (about 93 ms a run on an A100 in a profile of
    fulcrumresearch's cifar-10-speedrun, whose idea this is).
    """

    def forward(self, x):
        return x.flatten(2).max(dim=2).values


def entry(channels_in, channels_out, norm, activation):
    """How every group begins: a conv (only what the pool keeps), 2x2 max-pool, BatchNorm,
    activation."""
    return [ConvBeforePool(channels_in, channels_out), nn.MaxPool2d(2), norm(channels_out),
            activation()]


class ConvGroup(nn.Sequential):
    def __init__(self, channels_in, channels_out, norm, activation):
        super().__init__(*entry(channels_in, channels_out, norm, activation),
                         DiracConv(channels_out, channels_out), norm(channels_out),
                         activation())


class ResidualConvGroup(nn.Module):
    """ConvGroup with a third conv; the last two convs learn a correction added to their input.

    The activation comes after the add, as in the June-2024 airbench96, whose commit credits
    this with about a 10% speed-up over the paper's activation before the add.
    """

    def __init__(self, channels_in, channels_out, norm, activation):
        super().__init__()
        self.entry = nn.Sequential(*entry(channels_in, channels_out, norm, activation))
        self.residual = nn.Sequential(
            DiracConv(channels_out, channels_out), norm(channels_out), activation(),
            DiracConv(channels_out, channels_out), norm(channels_out))
        self.activation = activation()

    def forward(self, x):
        x = self.entry(x)
        return self.activation(x + self.residual(x))


class Net(nn.Module):
    def __init__(self, recipe):
        super().__init__()
        # Whitening: pixels next to each other are strongly correlated, so a plain first layer
        # sees a few dominant directions and gradient steps crawl along the rest. This layer's
        # filters are fixed from the data (`init_whitening`) to map each small patch to
        # uncorrelated, unit-variance coordinates, so training starts on a well-conditioned
        # input. Each filter comes with its negative, so the activation after it keeps both
        # signs of a feature.
        # Its bias starts random (PyTorch's default) and trains for a few steps only.
        k = recipe.whiten_kernel
        whiten_width = 2 * 3 * k**2
        self.whiten = nn.Conv2d(3, whiten_width, k, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        group = ResidualConvGroup if recipe.convs_per_group == 3 else ConvGroup
        norm = partial(BatchNorm, momentum=recipe.bn_momentum, eps=recipe.bn_eps)
        activation = ACTIVATIONS[recipe.activation]
        w1, w2, w3 = recipe.widths
        self.body = nn.Sequential(
            activation(),
            group(whiten_width, w1, norm, activation),
            group(w1, w2, norm, activation),
            group(w2, w3, norm, activation),
            GlobalMaxPool(),
        )
        self.head = nn.Linear(w3, NUM_CLASSES, bias=False)
        self.register_buffer("logit_scale", torch.tensor(float(recipe.logit_scale)),
                             persistent=False)

    def forward(self, x):
        return self.head(self.body(self.whiten(x))) * self.logit_scale


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
    if covariance.device.type == "mps":     # older MPS has no eigh (pytorch#151874)
        eigenvalues, eigenvectors = (t.to("mps") for t in torch.linalg.eigh(covariance.cpu()))
    else:
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    filters = eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]
    return filters.reshape(-1, images.shape[1], size, size)


@torch.no_grad()
def init_whitening(net, images, eps):
    filters = whitening_weights(images, net.whiten.kernel_size[0], eps)
    net.whiten.weight.copy_(torch.cat([filters, -filters]))


def build_net(recipe, execution):
    """The network, placed and cast as `execution` says (hlb.execution). Build once per
    invocation; `reset` per run."""
    net = Net(recipe).to(execution.device)
    if execution.dtype != torch.float32:
        net.to(execution.dtype)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.float()              # BatchNorm statistics need fp32
                m.momentum.fill_(recipe.bn_momentum)     # the recipe's, not fp16's nearest
        net.logit_scale = net.logit_scale.float().fill_(recipe.logit_scale)   # likewise
    return net.to(memory_format=execution.memory_format)


def reset(net):
    """Fresh random weights for a new run, written in place (a captured step keeps pointing at
    the same tensors). The whitening bias keeps nn.Conv2d's random init; init_whitening later
    sets the whitening weight from the data."""
    for m in net.modules():
        if m is not net and hasattr(m, "reset_parameters"):
            m.reset_parameters()
