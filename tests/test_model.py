import copy
from functools import partial

import pytest
import torch

from hlb.bench.overrides import override
from hlb.model import (BatchNorm, ConvBeforePool, DiracConv, GlobalMaxPool, Net, build_net,
                       ResidualConvGroup, init_whitening, patches, whitening_weights)
from hlb.recipes import RECIPES


def test_output_shape_and_parameter_count():
    net = Net(RECIPES["94"])
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
    net = Net(RECIPES["smoke"])
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
    net = Net(override(RECIPES["smoke"], []))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 6
    assert all(not b.weight.requires_grad and b.bias.requires_grad for b in bns)
    assert all(b.eps == 1e-12 and b.momentum.item() == pytest.approx(0.4) for b in bns)


def test_batchnorm_with_a_tensor_momentum_does_what_torchs_does():
    torch.manual_seed(0)
    ours, torchs = BatchNorm(5, momentum=0.3, eps=1e-5), torch.nn.BatchNorm2d(5, momentum=0.3)
    torchs.weight.requires_grad = False
    with torch.no_grad():
        ours.bias.uniform_()
        torchs.bias.copy_(ours.bias)
    for _ in range(3):
        x = torch.randn(8, 5, 4, 4) * 3 + 1
        torch.testing.assert_close(ours(x), torchs(x))
    assert torch.equal(ours.momentum, torch.tensor(0.3))
    torch.testing.assert_close(ours.running_mean, torchs.running_mean)
    torch.testing.assert_close(ours.running_var, torchs.running_var)
    assert ours.running_mean.abs().min() > 0.1          # they moved
    ours.eval(), torchs.eval()
    x = torch.randn(8, 5, 4, 4)
    torch.testing.assert_close(ours(x), torchs(x))
    # Its momentum and scratch statistics are per recipe, not part of a saved network.
    assert set(ours.state_dict()) == set(torchs.state_dict())


def expected_trainable(widths, convs_per_group):
    """By hand: whitening bias, 3x3 conv weights, one BatchNorm bias per conv, the head."""
    count, channels_in = 24, 24
    for w in widths:
        count += 9 * channels_in * w + 9 * w * w * (convs_per_group - 1) + convs_per_group * w
        channels_in = w
    return count + 10 * widths[-1]


@pytest.mark.parametrize("name, low, high", [("95", 4.5e6, 4.7e6), ("96", 9.8e6, 10.0e6)])
def test_wider_nets_shape_and_parameter_count(name, low, high):
    recipe = RECIPES[name]
    net = Net(recipe)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    print(f"recipe {name}: {trainable} trainable parameters")
    assert trainable == expected_trainable(recipe.widths, recipe.convs_per_group)
    assert low < trainable < high


def test_recipe_96_uses_residual_groups_with_default_batchnorm_momentum():
    net = Net(RECIPES["96"])
    assert sum(isinstance(m, ResidualConvGroup) for m in net.modules()) == 3
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 9
    assert all(b.momentum.item() == pytest.approx(0.1) and not b.weight.requires_grad
               for b in bns)


def test_residual_group_adds_its_input():
    torch.manual_seed(0)
    norm = partial(BatchNorm, momentum=0.1, eps=1e-12)
    group = ResidualConvGroup(4, 8, norm, torch.nn.GELU)
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        # Silence the residual branch: its two convs and BatchNorm biases give exact zeros.
        for m in group.residual.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.bias.zero_()
        out = group(x)
        entry = group.entry(x)
    # Without the skip path the output would be GELU(0) = 0 everywhere.
    assert out.abs().sum() > 0
    assert torch.allclose(out, torch.nn.functional.gelu(entry))


def untrimmed(net):
    """A copy of `net` whose pooled convs compute every output ('same' padding), as before."""
    ref = copy.deepcopy(net)
    for module in list(ref.modules()):
        for name, child in module.named_children():
            if isinstance(child, ConvBeforePool):
                plain = torch.nn.Conv2d(child.in_channels, child.out_channels, 3, padding=1,
                                        bias=False)
                plain.weight = child.weight
                setattr(module, name, plain)
    assert not any(isinstance(m, ConvBeforePool) for m in ref.modules())
    return ref


@pytest.mark.parametrize("name, changes", [
    ("94", []),                                 # maps 31 -> 30, 15 -> 14, 7 -> 6
    ("96", []),                                 # the residual groups
    ("94", ["whiten_kernel=3"]),                # 30: even sizes, nothing to trim
    ("94", ["whiten_kernel=4"]),                # 29 -> 28, then 14 (even), then 7 -> 6
])
def test_trimmed_convs_give_the_untrimmed_logits_and_gradients(name, changes):
    torch.manual_seed(0)
    recipe = override(RECIPES[name], ["widths=8,16,16", *changes])
    net = Net(recipe).double()
    ref = untrimmed(net)
    x = torch.randn(6, 3, 32, 32, dtype=torch.double)
    probe = torch.randn(6, 10, dtype=torch.double)
    out, ref_out = net(x), ref(x)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    (out * probe).sum().backward()
    (ref_out * probe).sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-10, atol=1e-12, msg=n)


def test_pooled_convs_compute_only_what_the_pool_keeps():
    net = Net(override(RECIPES["94"], ["widths=8,16,16"]))
    sizes = []
    for m in net.modules():
        if isinstance(m, ConvBeforePool):
            m.register_forward_hook(lambda m, args, out: sizes.append(out.shape[-1]))
    net(torch.randn(2, 3, 32, 32))
    assert sizes == [30, 14, 6]


def test_the_global_max_pool_gives_the_adaptive_pools_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 3, 3, dtype=torch.double, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    probe = torch.randn(5, 7, dtype=torch.double)
    ours = GlobalMaxPool()(x)
    theirs = torch.nn.AdaptiveMaxPool2d(1)(y).flatten(1)
    assert torch.equal(ours, theirs)
    (ours * probe).sum().backward()
    (theirs * probe).sum().backward()
    assert torch.equal(x.grad, y.grad) and x.grad.count_nonzero() == 35   # one per map


def test_the_network_with_the_flattened_max_equals_one_with_the_adaptive_pool():
    torch.manual_seed(0)
    net = Net(override(RECIPES["94"], ["widths=8,16,16"])).double()
    ref = copy.deepcopy(net)
    ref.body[-1] = torch.nn.Sequential(torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten())
    x = torch.randn(4, 3, 32, 32, dtype=torch.double)
    out, ref_out = net(x), ref(x)
    assert torch.equal(out, ref_out)
    out.sum().backward()
    ref_out.sum().backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0, msg=name)


@pytest.mark.parametrize("name", ["silu", "relu"])
def test_the_activation_knob_sets_every_activation_of_the_network(name):
    net = Net(override(RECIPES["96"], [f"activation={name}", "widths=8,16,16"]))
    wanted = {"silu": torch.nn.SiLU, "relu": torch.nn.ReLU}[name]
    found = [m for m in net.modules()
             if isinstance(m, (torch.nn.GELU, torch.nn.SiLU, torch.nn.ReLU))]
    # The one after the whitening layer, then three in each residual group.
    assert len(found) == 10 and all(isinstance(m, wanted) for m in found)
    assert isinstance(net.body[0], wanted)


def test_a_smaller_training_resolution_runs_through_the_same_network():
    net = Net(override(RECIPES["94"], ["widths=8,16,16"]))
    for side in (16, 24, 28, 32):
        assert net(torch.randn(2, 3, side, side)).shape == (2, 10)


def test_half_precision_keeps_the_recipes_logit_scale_and_batchnorm_momentum_exactly():
    # Cast to fp16 with the network, 1/9 and 0.4 would round (0.11108, 0.39990); the network
    # reads them as fp32 tensors holding the recipe's values, as a float scalar read before.
    import dataclasses

    from hlb.execution import execution
    recipe = RECIPES["94"]
    how = dataclasses.replace(execution(recipe, "cpu"), dtype=torch.float16)
    net = build_net(recipe, how)
    assert net.head.weight.dtype == torch.float16
    assert net.logit_scale.dtype == torch.float32
    assert net.logit_scale.item() == torch.tensor(1 / 9).item()
    momenta = {m.momentum.item() for m in net.modules() if isinstance(m, BatchNorm)}
    assert momenta == {torch.tensor(0.4).item()}
