import math

import pytest
import torch

from hlb.bench.overrides import override
from hlb.evaluate import logits, plain_evaluation, tta_accuracy, tta_views
from hlb.recipes import RECIPES


class Linear(torch.nn.Module):
    """A fixed linear map from pixels to 10 logits: every view gives different logits.

    It keeps each batch it is given, so tests can see what was computed."""

    def __init__(self, c=3, h=6, w=6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.randn(10, c * h * w, generator=g)
        self.batches = []

    def forward(self, x):
        self.batches.append(x.clone())
        return x.flatten(1) @ self.weight.T


def images(n=40, seed=1):
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def shifted(x):
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    return padded[:, :, :6, :6], padded[:, :, 2:, 2:]


SIX_VIEWS = tta_views(2, mirror_weight=0.5, shifted_weight=0.5)


def test_six_view_tta_weights_the_views_as_documented():
    net, x = Linear(), images()
    up_left, down_right = shifted(x)

    def pair(v):
        return (net(v) + net(v.flip(-1))) / 2

    expected = pair(x) / 2 + pair(up_left) / 4 + pair(down_right) / 4
    assert torch.allclose(logits(net, x, SIX_VIEWS, batch_size=16), expected, atol=1e-4)
    assert torch.allclose(logits(net, x, tta_views(1, 0.5, 0.5), batch_size=16), pair(x),
                          atol=1e-4)
    assert torch.allclose(logits(net, x, tta_views(0, 0.5, 0.5), batch_size=16), net(x),
                          atol=1e-4)


def test_view_weights_come_from_the_recipe_fields():
    net, x = Linear(), images()
    up_left, down_right = shifted(x)

    def pair(v):
        return 0.7 * net(v) + 0.3 * net(v.flip(-1))

    expected = 0.8 * pair(x) + 0.1 * pair(up_left) + 0.1 * pair(down_right)
    recipe = override(RECIPES["smoke"], ["tta_mirror_weight=0.3", "tta_shifted_weight=0.2",
                                         "eval_batch_size=16"])
    views = tta_views(2, recipe.tta_mirror_weight, recipe.tta_shifted_weight)
    assert sum(w for w, _ in views) == pytest.approx(1.0)
    assert torch.allclose(logits(net, x, views, batch_size=16), expected, atol=1e-4)


@pytest.mark.parametrize("fraction, chosen", [(0.25, 10), (0.01, 1)])
def test_selective_tta_augments_only_the_least_confident(fraction, chosen):
    net, x = Linear(), images()
    plain = net(x)
    full = logits(net, x, SIX_VIEWS, batch_size=16)
    mixed = logits(net, x, SIX_VIEWS, batch_size=16, tta_fraction=fraction)
    unsure = plain.softmax(1).amax(1).argsort()[:chosen]       # the least confident
    sure = torch.ones(len(x), dtype=torch.bool)
    sure[unsure] = False
    assert torch.allclose(mixed[unsure], full[unsure], atol=1e-4)
    assert torch.allclose(mixed[sure], plain[sure], atol=1e-4)


def test_selective_tta_reuses_the_plain_pass_for_the_identity_view():
    net, x = Linear(), images()
    logits(net, x, SIX_VIEWS, batch_size=16, tta_fraction=0.25)
    seen = torch.cat(net.batches)
    # Each image, as it is, went through the network exactly once: in the plain pass.
    for image in x:
        assert (seen == image).flatten(1).all(1).sum() == 1
    # The plain pass (40 images) and five more views of the 10 chosen: 90 real images.
    assert len(seen) == 16 * (math.ceil(40 / 16) + math.ceil(50 / 16))


@pytest.mark.parametrize("n, batch_size, fraction", [(40, 16, 0.25), (40, 16, 1.0),
                                                     (40, 64, 0.3), (7, 3, 0.5)])
def test_every_forward_sees_one_batch_shape(n, batch_size, fraction):
    net, x = Linear(), images(n)
    out = logits(net, x, SIX_VIEWS, batch_size, tta_fraction=fraction)
    assert out.shape == (n, 10)
    assert {tuple(b.shape) for b in net.batches} == {(min(n, batch_size), 3, 6, 6)}


def test_evaluate_counts_correct_answers_and_restores_training_mode():
    net, x = Linear(), images()
    net.train()
    labels = net(x).argmax(1)
    labels[:10] = (labels[:10] + 1) % 10                      # 10 of 40 wrong
    recipe = override(RECIPES["smoke"], ["eval_batch_size=16"])
    accuracy, loss = plain_evaluation(net, x, labels, recipe)
    assert accuracy.item() == pytest.approx(0.75) and loss.item() > 0
    assert net.training


def test_the_timed_tta_computes_no_loss(monkeypatch):
    # Nobody reads a loss in the timed region, so none is computed there.
    net, x = Linear(), images()
    labels = net(x).argmax(1)
    called = []
    monkeypatch.setattr("hlb.evaluate.F.cross_entropy",
                        lambda *a, **k: called.append(1) or torch.tensor(0.0))
    recipe = override(RECIPES["smoke"], ["eval_batch_size=16"])
    expected = (logits(net, x, SIX_VIEWS, 16, recipe.tta_fraction).argmax(1) == labels)
    assert tta_accuracy(net, x, labels, recipe).item() == expected.float().mean().item()
    assert called == []
    plain_evaluation(net, x, labels, recipe)
    assert called == [1]
