import pytest
import torch

from conftest import synthetic_cifar
from hlb.bench.overrides import override
from hlb.bench.runs import run_recipe
from hlb.execution import execution
from hlb.model import Net
from hlb.optim import (Lookahead, Muon, Schedule, WhiteningBiasFreeze, compiled_orthogonalize_all,
                       SCHEDULES, lr_multiplier, make_optimizers, newton_schulz,
                       orthogonalize_all, zero_state)
from hlb.recipes import RECIPES

CPU = torch.float32         # the Newton-Schulz iteration's dtype on a CPU


def optimizers_of(net, recipe):
    """The recipe's optimizers for `net` on the CPU, and the whitening bias's freeze."""
    freeze = WhiteningBiasFreeze(net, recipe)
    return make_optimizers(net, recipe, execution(recipe, "cpu"), freeze), freeze


def shaped(schedule="linear", **values):
    return override(RECIPES["94sgd"], [f"schedule={schedule}"] +
                    [f"{k}={v}" for k, v in values.items()])


def test_schedule_starts_peaks_and_ends_where_it_says():
    total, recipe = 476, shaped(warmup_frac=0.23, lr_start=0.2, lr_end=0.07)
    values = [lr_multiplier(s, total, recipe) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.2)
    assert max(values) == pytest.approx(1.0)
    assert values.index(max(values)) == int(total * 0.23)
    assert values[total] == pytest.approx(0.07)
    assert all(b <= a for a, b in zip(values[109:], values[110:]))


def test_schedule_without_warmup_decays_from_one():
    recipe = shaped(warmup_frac=0.0, lr_start=0.2, lr_end=0.0)
    assert lr_multiplier(0, 10, recipe) == 1.0
    assert lr_multiplier(10, 10, recipe) == 0.0


def test_a_cosine_schedule_is_one_name_away():
    recipe = shaped("cosine", warmup_frac=0.1, lr_start=0.2, lr_end=0.1)
    values = [lr_multiplier(s, 100, recipe) for s in range(101)]
    assert values[0] == pytest.approx(0.2) and values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx((1 + 0.1) / 2)        # halfway down the cosine
    assert values[100] == pytest.approx(0.1)
    assert all(b <= a for a, b in zip(values[10:], values[11:]))
    assert set(SCHEDULES) >= {"linear", "cosine"}


def test_a_new_shape_is_one_function(monkeypatch):
    monkeypatch.setitem(SCHEDULES, "step", lambda t, end: 1.0 if t < 0.5 else end)
    recipe = shaped("step", warmup_frac=0.0, lr_end=0.1)     # the recipe accepts it at once
    assert [lr_multiplier(s, 10, recipe) for s in (0, 4, 5, 9)] == [1.0, 1.0, 0.1, 0.1]


def test_a_groups_rate_cannot_be_detached_from_the_schedule():
    recipe = RECIPES["smoke"]
    optimizers, _ = optimizers_of(Net(recipe), recipe)
    Schedule(optimizers, recipe, "cpu")
    group = optimizers[0].param_groups[0]
    with pytest.raises(TypeError, match="'bn_biases': its lr comes from the schedule"):
        group["lr"] = 0.1
    with pytest.raises(TypeError, match="its lr comes from the schedule"):
        group.update(lr=0.1)
    group["momentum"] = 0.9                                  # other settings stay free
    assert group["momentum"] == 0.9


def test_parameter_groups_split_batchnorm_biases():
    recipe = RECIPES["smoke"]
    net = Net(recipe)
    (opt,), _ = optimizers_of(net, recipe)
    bn_group, whiten_group, other_group = opt.param_groups
    assert other_group["name"] == "filters_and_head"         # SGD alone trains the filters
    bn_biases = {id(m.bias) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in bn_group["params"]} == bn_biases
    assert whiten_group["params"] == [net.whiten.bias]
    assert whiten_group["lr"] == other_group["lr"]       # recipe 94sgd: the base rate
    assert id(net.whiten.weight) not in {id(p) for p in other_group["params"]}
    # Decay per step is the same for both groups: lr * weight_decay.
    assert bn_group["lr"] * bn_group["weight_decay"] == pytest.approx(
        other_group["lr"] * other_group["weight_decay"])
    assert bn_group["nesterov"]


def test_lookahead_pulls_toward_the_slow_copy_and_finishes_on_it():
    net = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    la = Lookahead(net, every=1, decay_per_step=0.5, total_steps=1, ramp=3.0)
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
    la = Lookahead(net, every=0, decay_per_step=0.95, total_steps=10, ramp=3.0)
    la.start()
    with torch.no_grad():
        net.weight.fill_(2.0)
    la.after_step(5)
    la.finish()
    assert torch.all(net.weight == 2.0)


def test_newton_schulz_makes_singular_values_near_one():
    g = torch.randn(64, 200, generator=torch.Generator().manual_seed(0))
    g[:, :10] *= 50                                      # badly conditioned on purpose
    for matrix in (g, g.T):
        x = newton_schulz(matrix, steps=5, dtype=CPU)
        assert x.shape == matrix.shape
        s = torch.linalg.svdvals(x)
        assert 0.6 < s.min() and s.max() < 1.25
        # Same singular vectors: x is close to U V^T of the input.
        u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
        assert torch.nn.functional.cosine_similarity(x.flatten(), (u @ vh).flatten(),
                                                     dim=0) > 0.95


def test_muon_holds_filter_norms_and_steps_by_lr():
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3) * 3)
    opt = Muon([w], lr=0.1, momentum=0.0, ns_steps=5, weight_decay=0.0, dtype=CPU)
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    opt.step()
    rescaled = before * (8 ** 0.5 / before.norm())
    step = (w.detach() - rescaled).reshape(8, -1)
    assert 0.06 < torch.linalg.svdvals(step).mean() < 0.12   # about lr per direction
    w.grad = torch.zeros_like(w)
    opt.step()
    assert w.norm().item() == pytest.approx(8 ** 0.5, rel=0.1)


def test_muon_recipe_groups_filters_apart_and_learns():
    recipe = override(RECIPES["94"], [
        "train_images=512", "test_images=256", "batch_size=64", "epochs=3.0",
        "widths=16,32,32", "whiten_init_images=256", "eval_batch_size=256"])
    net = Net(recipe)
    (sgd, muon), _ = optimizers_of(net, recipe)
    filters = [p for p in net.parameters() if p.ndim == 4 and p.requires_grad]
    assert [id(p) for p in muon.param_groups[0]["params"]] == [id(p) for p in filters]
    assert not any(p.ndim == 4 for g in sgd.param_groups for p in g["params"])
    record = run_recipe(recipe, runs=1, device="cpu", seed=0, cifar=synthetic_cifar())
    assert record.results[0].tta_acc > 0.6


def test_lookahead_covers_buffers_and_mixed_dtypes():
    # fp16 weights next to fp32 BatchNorm statistics, as on a GPU; the pull reaches both.
    net = torch.nn.Sequential(torch.nn.Linear(2, 4, bias=False).half(), torch.nn.BatchNorm1d(4))
    la = Lookahead(net, every=2, decay_per_step=0.0, total_steps=4, ramp=3.0)
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].running_mean.fill_(1.0)
    la.after_step(1)                 # not a Lookahead step: nothing moves
    assert torch.all(net[0].weight == 1.0)
    la.after_step(2)                 # keep = 0: the slow copy jumps to the fast weights
    with torch.no_grad():
        net[0].weight.fill_(5.0)
        net[1].running_mean.fill_(5.0)
    la.finish()
    assert torch.all(net[0].weight == 1.0) and net[0].weight.dtype == torch.float16
    assert torch.all(net[1].running_mean == 1.0)


def lr_at(schedule, optimizers, step):
    """Each group's lr at `step`, as Python floats, read from the device schedule."""
    schedule.step.fill_(step)
    schedule.advance()
    return [float(g["lr"]) for o in optimizers for g in o.param_groups]


def test_whitening_bias_can_run_its_own_schedule_to_the_freeze():
    recipe = RECIPES["94"]                    # 25 steps per epoch, frozen after 3 epochs
    optimizers, freeze = optimizers_of(Net(recipe), recipe)
    assert recipe.whiten_bias_own_schedule and freeze.steps == 75
    schedule = Schedule(optimizers, recipe, "cpu")
    groups = [g for o in optimizers for g in o.param_groups]
    assert [g["name"] for g in groups] == ["bn_biases", "whiten_bias", "head", "filters"]
    peaks = [g["peak_lr"] for g in groups]

    def ratios(step):
        return [lr / peak for lr, peak in zip(lr_at(schedule, optimizers, step), peaks)]

    assert ratios(0) == pytest.approx([1.0] * 4)
    assert ratios(30) == pytest.approx([1 - 30 / 200, 1 - 30 / 75, 1 - 30 / 200, 1 - 30 / 200])
    # Held at the end, never negative.
    assert ratios(150) == pytest.approx([0.25, 0.0, 0.25, 0.25])
    assert groups[3]["lr"].item() == pytest.approx(0.25 * recipe.muon_lr)
    # Recipe 94sgd keeps one schedule for every group.
    plain = RECIPES["94sgd"]
    optimizers, _ = optimizers_of(Net(plain), plain)
    schedule = Schedule(optimizers, plain, "cpu")
    peaks = [g["peak_lr"] for g in optimizers[0].param_groups]
    values = lr_at(schedule, optimizers, 200)
    assert len({round(lr / peak, 6) for lr, peak in zip(values, peaks)}) == 1


def test_the_device_schedule_holds_the_float_schedule_and_counts_steps():
    recipe = RECIPES["smoke"]
    optimizers, _ = optimizers_of(Net(recipe), recipe)
    schedule = Schedule(optimizers, recipe, "cpu")
    sgd_head = optimizers[0].param_groups[2]
    for step in range(recipe.total_steps()):
        schedule.advance()
        expected = sgd_head["peak_lr"] * lr_multiplier(step, recipe.total_steps(), recipe)
        assert sgd_head["lr"].item() == torch.tensor(expected).item()   # the same float32
    assert schedule.step.item() == recipe.total_steps()
    schedule.reset()
    assert schedule.step.item() == 0


def test_optimizer_state_is_made_once_and_zeroed_in_place():
    recipe = RECIPES["94"]
    net = Net(recipe)
    optimizers, _ = optimizers_of(net, recipe)
    state = [v for o in optimizers for s in o.state.values() for v in s.values()]
    # One buffer per trained tensor, the whitening bias included.
    assert len(state) == sum(p.requires_grad for p in net.parameters())
    for v in state:
        v.fill_(1.0)
    zero_state(optimizers)
    after = [v for o in optimizers for s in o.state.values() for v in s.values()]
    assert all(a is b for a, b in zip(after, state)) and all(v.eq(0).all() for v in after)


def test_batched_orthogonalization_equals_one_matrix_at_a_time():
    g = torch.Generator().manual_seed(0)
    # Wide and tall matrices of different sizes, as the conv filters of a network are.
    matrices = [torch.randn(8, 36, generator=g), torch.randn(16, 72, generator=g),
                torch.randn(40, 12, generator=g), torch.randn(5, 5, generator=g)]
    batched = orthogonalize_all(matrices, steps=3, dtype=CPU)
    for m, b in zip(matrices, batched):
        assert b.shape == m.shape
        assert torch.allclose(b, newton_schulz(m, 3, CPU), atol=1e-5)


def test_compiled_orthogonalization_matches_the_eager_one():
    # The GPU path when compiling; inductor also builds it for the CPU.
    g = torch.Generator().manual_seed(0)
    matrices = [torch.randn(8, 36, generator=g), torch.randn(16, 72, generator=g)]
    compiled = compiled_orthogonalize_all()
    assert compiled is compiled_orthogonalize_all()           # built once per process
    for c, e in zip(compiled(matrices, 3, CPU), orthogonalize_all(matrices, 3, CPU)):
        assert torch.allclose(c, e, atol=1e-5)


def test_muon_step_equals_the_per_filter_method():
    # The multi-tensor step against the method written out one filter at a time.
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 4, 3, 3), (16, 8, 3, 3), (4, 16, 3, 3)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    expected = [p.detach().clone() for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    opt = Muon(params, lr=0.1, momentum=0.6, ns_steps=3, weight_decay=0.0, dtype=CPU)
    for _ in range(3):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for p, grad in zip(params, grads):
            p.grad = grad
        opt.step()
        for w, buf, grad in zip(expected, buffers, grads):
            buf.mul_(0.6).add_(grad)
            update = newton_schulz((grad + 0.6 * buf).reshape(len(w), -1), 3, CPU)
            w.mul_(len(w) ** 0.5 / w.norm()).add_(update.view_as(w), alpha=-0.1)
    for p, w in zip(params, expected):
        assert torch.allclose(p.detach(), w, atol=1e-5)


def test_lookahead_ramp_sets_how_fast_the_pull_grows():
    # Half-way through, keep = decay * 0.5 ** ramp of the slow copy.
    for ramp, keep in ((1.0, 0.5), (3.0, 0.125)):
        net = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(net.weight)
        la = Lookahead(net, every=1, decay_per_step=1.0, total_steps=2, ramp=ramp)
        with torch.no_grad():
            net.weight.fill_(1.0)
        la.after_step(1)
        assert net.weight.item() == pytest.approx(1 - keep)


def test_muon_weight_decay_shrinks_the_rescaled_filters_before_the_step():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(8, 4, 3, 3, generator=g)
    start = torch.randn(8, 4, 3, 3, generator=g)
    moved = {}
    for decay in (0.0, 0.5):
        w = torch.nn.Parameter(start.clone())
        opt = Muon([w], lr=0.1, momentum=0.0, ns_steps=3, weight_decay=decay, dtype=CPU)
        w.grad = grads.clone()
        opt.step()
        moved[decay] = w.detach()
    rescaled = start * (8 ** 0.5 / start.norm())
    update = rescaled - moved[0.0]                       # lr times the orthogonalised step
    assert torch.allclose(moved[0.5], rescaled * (1 - 0.1 * 0.5) - update, atol=1e-6)


def test_the_whitening_bias_freeze_is_one_piece():
    recipe = override(RECIPES["94"], ["whiten_bias_epochs=0.2"])     # 25 steps an epoch
    net = Net(recipe)
    optimizers, freeze = optimizers_of(net, recipe)
    assert freeze.steps == 5 and freeze.span == 5
    group = next(g for g in optimizers[0].param_groups if g["name"] == "whiten_bias")
    assert group["params"] == [net.whiten.bias] and group["span"] == 5
    assert [freeze.frozen_at(s) for s in (0, 4, 5, 6)] == [False, False, True, True]
    freeze.set(True)
    assert freeze.frozen and not net.whiten.bias.requires_grad
    freeze.set(False)
    assert net.whiten.bias.requires_grad
    # Without its own schedule the group runs the whole run's.
    plain = override(recipe, ["whiten_bias_own_schedule=false"])
    assert WhiteningBiasFreeze(Net(plain), plain).span is None
