import torch

from hlb.model import DiracConv, init_whitening, make_net, patches, whitening_weights
from hlb.recipes import RECIPES, override


def test_output_shape_and_parameter_count():
    net = make_net(RECIPES["94"])
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    # About 2M trainable parameters, as the airbench94 network has.
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert 1.8e6 < trainable < 2.1e6


def test_whitening_makes_patch_covariance_identity():
    g = torch.Generator().manual_seed(0)
    # Correlated channels and neighbouring pixels, like real images.
    base = torch.randn(200, 1, 33, 33, generator=g)
    smooth = (base[:, :, 1:, 1:] + base[:, :, :-1, :-1]) / 2
    images = torch.cat([smooth, 0.5 * smooth + 0.1 * torch.randn(200, 1, 32, 32, generator=g),
                        torch.randn(200, 1, 32, 32, generator=g)], dim=1)
    filters = whitening_weights(images, 2, eps=0.0).reshape(12, -1)
    x = patches(images, 2)
    covariance = filters @ (x.T @ x / len(x)) @ filters.T
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)


def test_whitening_layer_holds_filters_and_their_negatives():
    net = make_net(RECIPES["smoke"])
    init_whitening(net, torch.randn(50, 3, 32, 32), eps=5e-4)
    w = net.whiten.weight
    assert w.shape == (24, 3, 2, 2)
    assert torch.equal(w[12:], -w[:12])
    assert not w.requires_grad and net.whiten.bias.requires_grad


def test_dirac_conv_passes_input_channels_through():
    conv = DiracConv(4, 8)
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(conv(x)[:, :4], x)


def test_batchnorm_scale_is_frozen():
    net = make_net(override(RECIPES["smoke"], []))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 6
    assert all(not b.weight.requires_grad and b.bias.requires_grad for b in bns)
    assert all(b.eps == 1e-12 and b.momentum == 0.4 for b in bns)
