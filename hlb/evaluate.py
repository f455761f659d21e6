"""Test-set evaluation, plain and with test-time augmentation (TTA)."""

import math

import torch
import torch.nn.functional as F


def _mirror(net, x):
    return 0.5 * net(x) + 0.5 * net(x.flip(-1))


def _mirror_translate(net, x):
    # Six views: the image and two 1-pixel diagonal shifts, each with its mirror. The
    # unshifted pair gets half the weight, each shifted pair a quarter.
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[-2:]
    up_left = padded[:, :, :h, :w]
    down_right = padded[:, :, 2:, 2:]
    shifted = 0.5 * _mirror(net, up_left) + 0.5 * _mirror(net, down_right)
    return 0.5 * _mirror(net, x) + 0.5 * shifted


VIEWS = {0: lambda net, x: net(x), 1: _mirror, 2: _mirror_translate}


@torch.no_grad()
def logits(net, images, tta_level, batch_size, tta_fraction=1.0):
    """Logits of every image under the views of `tta_level`.

    With tta_fraction < 1, only that share of the images, the least confident under the plain
    view, get the augmented views; the others keep their plain logits. Confident images
    rarely change their answer, so most of the TTA cost buys nothing for them.
    """
    was_training = net.training
    net.eval()

    def run(views, x):
        return torch.cat([views(net, batch).float() for batch in x.split(batch_size)])

    if tta_level and tta_fraction < 1:
        out = run(VIEWS[0], images)
        unsure = out.softmax(1).amax(1).topk(math.ceil(tta_fraction * len(images)),
                                              largest=False).indices
        out[unsure] = run(VIEWS[tta_level], images[unsure])
    else:
        out = run(VIEWS[tta_level], images)
    net.train(was_training)
    return out


def evaluate(net, images, labels, tta_level=0, batch_size=2000, label_smoothing=0.0,
             tta_fraction=1.0):
    """Return (accuracy, mean loss) as device tensors; reading them is the caller's sync."""
    out = logits(net, images, tta_level, batch_size, tta_fraction)
    accuracy = (out.argmax(1) == labels).float().mean()
    loss = F.cross_entropy(out, labels, label_smoothing=label_smoothing)
    return accuracy, loss
