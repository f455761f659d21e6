import pytest
import torch

from hlb.evaluate import evaluate, logits


class Linear(torch.nn.Module):
    """A fixed linear map from pixels to 10 logits: every view gives different logits."""

    def __init__(self, c=3, h=6, w=6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.randn(10, c * h * w, generator=g)

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


def images(n=40, seed=1):
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_six_view_tta_weights_the_views_as_documented():
    net, x = Linear(), images()
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[:, :, :6, :6], padded[:, :, 2:, 2:]

    def pair(v):
        return (net(v) + net(v.flip(-1))) / 2

    expected = pair(x) / 2 + pair(up_left) / 4 + pair(down_right) / 4
    assert torch.allclose(logits(net, x, 2, batch_size=16), expected, atol=1e-4)
    assert torch.allclose(logits(net, x, 1, batch_size=16), pair(x), atol=1e-4)
    assert torch.allclose(logits(net, x, 0, batch_size=16), net(x), atol=1e-4)


@pytest.mark.parametrize("fraction, chosen", [(0.25, 10), (0.01, 1)])
def test_selective_tta_augments_only_the_least_confident(fraction, chosen):
    net, x = Linear(), images()
    plain = logits(net, x, 0, batch_size=16)
    full = logits(net, x, 2, batch_size=16)
    mixed = logits(net, x, 2, batch_size=16, tta_fraction=fraction)
    unsure = plain.softmax(1).amax(1).argsort()[:chosen]       # the least confident
    sure = torch.ones(len(x), dtype=torch.bool)
    sure[unsure] = False
    assert torch.allclose(mixed[unsure], full[unsure], atol=1e-4)
    assert torch.allclose(mixed[sure], plain[sure], atol=1e-4)


def test_evaluate_counts_correct_answers_and_restores_training_mode():
    net, x = Linear(), images()
    net.train()
    labels = net(x).argmax(1)
    labels[:10] = (labels[:10] + 1) % 10                      # 10 of 40 wrong
    accuracy, loss = evaluate(net, x, labels, tta_level=0, batch_size=16)
    assert accuracy.item() == pytest.approx(0.75) and loss.item() > 0
    assert net.training
