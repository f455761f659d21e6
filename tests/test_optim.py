import pytest
import torch

from hlb.model import make_net
from hlb.optim import Lookahead, lr_multiplier, make_optimizer, sgd_settings
from hlb.recipes import RECIPES


def test_schedule_starts_peaks_and_ends_where_it_says():
    total = 476
    values = [lr_multiplier(s, total, 0.23, 0.2, 0.07) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.2)
    assert max(values) == pytest.approx(1.0)
    assert values.index(max(values)) == int(total * 0.23)
    assert values[total] == pytest.approx(0.07)
    assert all(b <= a for a, b in zip(values[109:], values[110:]))


def test_schedule_without_warmup_decays_from_one():
    assert lr_multiplier(0, 10, 0.0, 0.2, 0.0) == 1.0
    assert lr_multiplier(10, 10, 0.0, 0.2, 0.0) == 0.0


def test_decoupled_settings_match_the_paper_values():
    lr, bias_lr, decay = sgd_settings(RECIPES["94"])
    assert lr == pytest.approx(11.5 / (1024 * (1 + 1 / 0.15)))
    assert bias_lr == pytest.approx(64 * lr)
    assert bias_lr == pytest.approx(0.094, abs=0.001)
    assert decay == pytest.approx(0.0153 * 1024 / (1024 * (1 + 1 / 0.15)))


def test_parameter_groups_split_batchnorm_biases():
    recipe = RECIPES["smoke"]
    net = make_net(recipe)
    opt = make_optimizer(net, recipe)
    bn_group, other_group = opt.param_groups
    bn_biases = {id(m.bias) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in bn_group["params"]} == bn_biases
    assert id(net.whiten.bias) in {id(p) for p in other_group["params"]}
    assert id(net.whiten.weight) not in {id(p) for p in other_group["params"]}
    # Decay per step is the same for both groups: lr * weight_decay.
    assert bn_group["lr"] * bn_group["weight_decay"] == pytest.approx(
        other_group["lr"] * other_group["weight_decay"])
    assert bn_group["nesterov"]


def test_lookahead_pulls_toward_the_slow_copy_and_finishes_on_it():
    net = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    la = Lookahead(net, every=1, decay_per_step=0.5, total_steps=1)
    with torch.no_grad():
        net.weight.fill_(1.0)
    la.after_step(1)                 # keep 0.5 of the slow copy (0), take 0.5 of the fast (1)
    assert torch.allclose(net.weight, torch.full((1, 2), 0.5))
    with torch.no_grad():
        net.weight.fill_(3.0)
    la.finish()                      # the network takes the slow weights
    assert torch.allclose(net.weight, torch.full((1, 2), 0.5))


def test_lookahead_off_changes_nothing():
    net = torch.nn.Linear(2, 1)
    la = Lookahead(net, every=0, decay_per_step=0.95, total_steps=10)
    with torch.no_grad():
        net.weight.fill_(2.0)
    la.after_step(5)
    la.finish()
    assert torch.all(net.weight == 2.0)
