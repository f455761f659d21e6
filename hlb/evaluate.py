"""Test-set evaluation, plain and with test-time augmentation (TTA).

TTA averages the logits of a few views of each test image: the image and its mirror (level 1),
and at level 2 also both of them shifted one pixel along either diagonal (six views). The
recipe weighs the views (`tta_mirror_weight`, `tta_shifted_weight`).

Every forward pass sees one batch shape (a short last chunk is padded), so a compiled network
or a CUDA graph meets no new shape during a run.
"""

import math

import torch
import torch.nn.functional as F


def _identity(x):
    return x


def _up_left(x):
    h, w = x.shape[-2:]
    return F.pad(x, (1, 1, 1, 1), mode="reflect")[:, :, :h, :w]


def _down_right(x):
    return F.pad(x, (1, 1, 1, 1), mode="reflect")[:, :, 2:, 2:]


def _mirrored(view):
    return lambda x: view(x).flip(-1)


def tta_views(level, mirror_weight, shifted_weight):
    """[(weight, view)] of a TTA level: the identity view first, the weights summing to 1.

    The mirror of a view takes `mirror_weight` of that view's share; at level 2 the two
    shifted views share `shifted_weight` equally, and the unshifted view keeps the rest.
    """
    views = [(1.0, _identity)]
    if level == 2:
        views = [(1 - shifted_weight, _identity), (shifted_weight / 2, _up_left),
                 (shifted_weight / 2, _down_right)]
    if level == 0:
        return views
    return [pair for weight, view in views
            for pair in ((weight * (1 - mirror_weight), view),
                         (weight * mirror_weight, _mirrored(view)))]


def _stacked(x, views, size):
    """torch.cat([view(x) for view in views]) in chunks of `size`, each built when needed."""
    n = len(x)
    for start in range(0, n * len(views), size):
        parts = []
        for i, view in enumerate(views):
            first = start - i * n          # the chunk's start within view i's block
            if -size < first < n:
                parts.append(view(x[max(first, 0):first + size]))
        yield torch.cat(parts)


def _forward(net, chunks, size):
    """net on each chunk, padded with zeros to exactly `size` images; the logits in order."""
    out = []
    for chunk in chunks:
        short = size - len(chunk)
        if short:
            chunk = torch.cat([chunk, chunk.new_zeros((short, *chunk.shape[1:]))])
        # A copy: a compiled net's CUDA graphs reuse their output memory on the next call.
        out.append(net(chunk)[:size - short].to(torch.float, copy=True))
    return torch.cat(out)


@torch.no_grad()
def logits(net, images, views, batch_size, tta_fraction=1.0):
    """Logits of every image, averaged over `views` (from `tta_views`).

    A plain pass over all images comes first; its logits serve as the identity view. With
    tta_fraction < 1 only that share of the images, the least confident under the plain view,
    get the other views; the rest keep their plain logits (confident images rarely change
    their answer, so TTA buys little for them: hiverge's cifar10-speedrun's selective TTA).
    The other views of the chosen images run as one batch, in chunks of the plain pass's size.
    """
    was_training = net.training
    net.eval()
    size = min(batch_size, len(images))
    out = _forward(net, images.split(size), size)
    if len(views) > 1:
        chosen = slice(None)
        if tta_fraction < 1:
            count = math.ceil(tta_fraction * len(images))
            chosen = out.softmax(1).amax(1).topk(count, largest=False).indices
        x = images[chosen]
        others = _forward(net, _stacked(x, [view for _, view in views[1:]], size), size)
        mixed = views[0][0] * out[chosen]
        for (weight, _), view_logits in zip(views[1:], others.view(len(views) - 1, len(x), -1)):
            mixed += weight * view_logits
        out[chosen] = mixed
    net.train(was_training)
    return out


def tta_accuracy(net, images, labels, recipe):
    """The accuracy under the recipe's TTA, as a device tensor (reading it is the caller's
    sync). No loss: this is what the timed region measures, and nobody reads one there."""
    views = tta_views(recipe.tta_level, recipe.tta_mirror_weight, recipe.tta_shifted_weight)
    out = logits(net, images, views, recipe.eval_batch_size, recipe.tta_fraction)
    return (out.argmax(1) == labels).float().mean()


def plain_evaluation(net, images, labels, recipe):
    """(accuracy, mean loss) of one plain view, as device tensors. The loss is label-smoothed
    as the training loss is, so the two compare."""
    out = logits(net, images, tta_views(0, 0, 0), recipe.eval_batch_size)
    accuracy = (out.argmax(1) == labels).float().mean()
    return accuracy, F.cross_entropy(out, labels, label_smoothing=recipe.label_smoothing)
