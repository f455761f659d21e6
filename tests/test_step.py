import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import synthetic_cifar
from hlb.bench.overrides import override
from hlb.bench.report import Listener
from hlb.bench.runs import PreparedRecipe
from hlb.errors import UsageError
from hlb.execution import execution
from hlb.model import reset
from hlb.optim import lr_multiplier, orthogonalize_all
from hlb.recipes import RECIPES
from hlb.step import forward_loss, summed_loss
from hlb.train import prepare

# 8 steps per epoch, 24 in all; the whitening bias freezes after step 8.
TINY = ["train_images=512", "test_images=256", "batch_size=64", "epochs=3.0",
        "widths=16,32,32", "whiten_init_images=256", "eval_batch_size=256",
        "whiten_bias_epochs=1.0"]
FREEZE = 8
SGD = override(RECIPES["94sgd"], TINY)                    # with Lookahead every 5 steps
MUON = override(RECIPES["94"], TINY)                      # the bias's own schedule to step 8

# Operations that make the host wait for the device.
SYNCING = {"_local_scalar_dense", "item", "nonzero", "masked_select", "is_nonzero", "equal",
           "allclose", "unique", "_unique2", "unique_consecutive", "unique_dim"}


class OpTrace(TorchDispatchMode):
    """Every aten op run, with its non-tensor arguments (tensors as shape and dtype)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}

        def plain(a):
            if isinstance(a, torch.Tensor):
                return ("tensor", tuple(a.shape), a.dtype)
            if isinstance(a, (list, tuple)):
                return tuple(plain(x) for x in a)
            if isinstance(a, (int, float, str, type(None), torch.dtype, torch.device,
                              torch.memory_format, torch.layout)):
                return a
            return type(a).__name__          # a profiler record's handle, and the like
        self.ops.append((str(func), plain(args), tuple(sorted(
            (k, plain(v)) for k, v in kwargs.items()))))
        return func(*args, **kwargs)


def random_batch(recipe, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(recipe.batch_size, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (recipe.batch_size,), generator=g)
    return images, labels


def prepared(recipe, device="cpu", how=None):
    return prepare(recipe, synthetic_cifar(64, 64), device, how)


def loaded_step(recipe, seed=0):
    torch.manual_seed(seed)
    run = prepared(recipe)
    net, step = run.net, run.step
    step.reset()
    images, labels = random_batch(recipe, seed)
    step.load(images, labels, torch.arange(recipe.batch_size))
    return net, step


@pytest.mark.parametrize("recipe", [SGD, MUON], ids=["sgd", "muon"])
def test_every_step_runs_the_same_operations_within_each_side_of_the_freeze(recipe):
    _, step = loaded_step(recipe)
    traces = []
    for _ in range(FREEZE + 3):
        with OpTrace() as trace:
            step()
        traces.append(trace.ops)
    assert all(t == traces[0] for t in traces[:FREEZE])        # the first step included
    assert all(t == traces[FREEZE] for t in traces[FREEZE:])
    assert traces[FREEZE] != traces[0]                         # the bias drops out
    assert len(traces[FREEZE]) < len(traces[0])


@pytest.mark.parametrize("recipe", [SGD, MUON], ids=["sgd", "muon"])
def test_no_operation_in_a_step_waits_for_the_device(recipe):
    _, step = loaded_step(recipe)
    names = set()
    for _ in range(FREEZE + 1):
        with OpTrace() as trace:
            step()
        names |= {op.split(".")[1] for op, _, _ in trace.ops}
    assert "_fused_sgd_" in names and not names & SYNCING


def test_the_step_reads_its_batch_from_fixed_buffers_in_the_inputs_layout():
    images = torch.randn(10, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(10)
    recipe = override(SGD, ["batch_size=4"])
    step = prepared(recipe).step
    step.images = step.images.contiguous(memory_format=torch.channels_last)   # as on a GPU
    buffers = step.images.data_ptr(), step.labels.data_ptr()
    index = torch.tensor([7, 2, 2, 0])
    step.load(images, labels, index)
    assert (step.images.data_ptr(), step.labels.data_ptr()) == buffers
    assert step.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(step.images, images[index]) and torch.equal(step.labels, labels[index])


# The eager step as it was before the captured form: learning rates as Python floats written
# into the groups each step, Muon's state made on first use, torch SGD's own first step, and
# Lookahead's ramp hard-coded. Kept here only as the reference for the captured form.

class ReferenceMuon(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum, ns_steps):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            buffers = [self.state[p].setdefault("momentum", torch.zeros_like(g))
                       for p, g in zip(params, grads)]
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            nesterov = torch._foreach_add(grads, buffers, alpha=group["momentum"])
            norms = torch._foreach_norm(params)
            torch._foreach_mul_(params, [len(p) ** 0.5 / n for p, n in zip(params, norms)])
            updates = orthogonalize_all([g.reshape(len(g), -1) for g in nesterov],
                                        group["ns_steps"], torch.float32)
            torch._foreach_add_(params, [u.reshape(p.shape) for u, p in zip(updates, params)],
                                alpha=-group["lr"])


def reference_optimizers(net, recipe):
    lr, bias_lr, whiten_lr, decay = (recipe.head_lr, recipe.bias_lr, recipe.whiten_bias_lr,
                                     recipe.weight_decay)
    muon = recipe.optimizer == "muon"
    bn = [m.bias for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    filters = [p for p in net.parameters() if p.ndim == 4 and p.requires_grad] if muon else []
    taken = {id(p) for p in bn + filters + [net.whiten.bias]}
    others = [p for p in net.parameters() if p.requires_grad and id(p) not in taken]
    span = FREEZE if recipe.whiten_bias_own_schedule else None
    groups = [dict(params=bn, lr=bias_lr, weight_decay=decay / bias_lr),
              dict(params=[net.whiten.bias], lr=whiten_lr, weight_decay=decay / whiten_lr,
                   span=span),
              dict(params=others, lr=lr, weight_decay=decay / lr)]
    optimizers = [torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=True,
                                  fused=True)]
    if muon:
        optimizers.append(ReferenceMuon(filters, recipe.muon_lr, recipe.muon_momentum,
                                        recipe.muon_ns_steps))
    for group in (g for o in optimizers for g in o.param_groups):
        group["peak_lr"] = group["lr"]
        group["span"] = group.get("span") or recipe.total_steps()
    return optimizers


def reference_step(net, optimizers, recipe, images, labels, step, slow):
    if step == FREEZE:
        net.whiten.bias.requires_grad_(False)
    out = net(images)
    loss = F.cross_entropy(out.float(), labels, label_smoothing=recipe.label_smoothing,
                           reduction="sum")
    loss.backward()
    for group in (g for o in optimizers for g in o.param_groups):
        span = group["span"]
        group["lr"] = group["peak_lr"] * lr_multiplier(min(step, span), span, recipe)
    for optimizer in optimizers:
        optimizer.step()
    net.zero_grad(set_to_none=True)
    step += 1
    if recipe.lookahead_every and step % recipe.lookahead_every == 0:
        keep = recipe.lookahead_decay ** recipe.lookahead_every * (
            step / recipe.total_steps()) ** 3
        fast = [v for v in net.state_dict().values() if v.is_floating_point()]
        with torch.no_grad():
            torch._foreach_lerp_(slow, fast, 1 - keep)
            torch._foreach_copy_(fast, slow)
    return loss


def set_state(step_at, net, optimizers, slow, seed):
    """The same state at step `step_at` for a network, its optimizers and a Lookahead copy:
    random momentum (none before the first step, as torch SGD has it) and a random slow copy."""
    g = torch.Generator().manual_seed(seed)
    net.whiten.bias.requires_grad_(step_at <= FREEZE)    # frozen at the freeze step itself
    for optimizer in optimizers:
        for p in (p for group in optimizer.param_groups for p in group["params"]):
            key = "momentum" if "ns_steps" in optimizer.defaults else "momentum_buffer"
            momentum = torch.randn(p.shape, generator=g) * 0.01
            if step_at > 0:
                optimizer.state[p][key] = momentum
            elif key in optimizer.state[p]:
                optimizer.state[p][key].zero_()
    with torch.no_grad():
        for v in slow:
            v.add_(torch.randn(v.shape, generator=g) * 0.01)


@pytest.mark.parametrize("recipe", [SGD, MUON], ids=["sgd+lookahead", "muon"])
@pytest.mark.parametrize("at", [0, 1, 4, FREEZE - 1, FREEZE, FREEZE + 1, 14, 23])
def test_one_step_equals_the_eager_reference_step(recipe, at):
    torch.manual_seed(at)
    run = prepared(recipe)
    net, step, lookahead = run.net, run.step, run.lookahead
    reference_net = copy.deepcopy(net)
    step.reset()
    lookahead.start()
    optimizers = reference_optimizers(reference_net, recipe)
    reference_slow = [v.detach().clone() for v in lookahead.slow]
    set_state(at, net, step.optimizers, lookahead.slow, seed=at)
    set_state(at, reference_net, optimizers, reference_slow, seed=at)
    step.steps_taken = at
    step.schedule.step.fill_(at)
    images, labels = random_batch(recipe, at)

    expected = reference_step(reference_net, optimizers, recipe, images, labels, at,
                              reference_slow)
    step.load(images, labels, torch.arange(len(labels)))
    loss = step()
    lookahead.after_step(step.steps_taken)

    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert step.loss_sum.item() == pytest.approx(expected.item(), rel=1e-6)
    for (name, a), b in zip(net.state_dict().items(), reference_net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7, msg=name)
    for mine, theirs in zip(step.optimizers, optimizers):
        for p, q in zip(mine.state.values(), theirs.state.values()):
            torch.testing.assert_close(list(p.values()), list(q.values()), rtol=2e-6, atol=1e-7)
    assert net.whiten.bias.requires_grad == reference_net.whiten.bias.requires_grad


def test_the_loss_of_fp16_logits_is_summed_in_fp32():
    # 2000 images with spread logits, as in 94muon's second epoch on a GPU: summed in fp16,
    # the label-smoothing term passes 65504 and the loss reads inf (gradients stay finite).
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2000, 10, generator=g) * 20).half().requires_grad_()
    labels = torch.randint(0, 10, (2000,), generator=g)
    assert F.cross_entropy(logits, labels, label_smoothing=0.2, reduction="sum").isinf()
    loss = summed_loss(logits, labels, 0.2)
    expected = F.cross_entropy(logits.double(), labels, label_smoothing=0.2, reduction="sum")
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert logits.grad.dtype == torch.float16 and logits.grad.isfinite().all()


def test_a_new_run_starts_from_zeroed_state_at_step_zero():
    net, step = loaded_step(MUON)
    for _ in range(3):
        step()
    reset(net)
    step.reset()
    assert step.steps_taken == 0 and step.schedule.step.item() == 0
    assert step.loss_sum.item() == 0 and step.correct.item() == 0
    assert all(v.eq(0).all() for o in step.optimizers for s in o.state.values()
               for v in s.values())


def test_inductors_own_cuda_graphs_cannot_sit_inside_a_captured_step():
    # Refused when the recipe is built, before any data or network.
    for mode in ("reduce-overhead", "max-autotune"):
        with pytest.raises(UsageError, match="capture_step=True: expected false with "
                                             f"compile_mode={mode}"):
            override(SGD, ["capture_step=true", "compile=true", f"compile_mode={mode}"])
    allowed = override(SGD, ["capture_step=true", "compile=true",
                             "compile_mode=max-autotune-no-cudagraphs"])
    assert prepared(allowed).step.graphs is None


def test_the_cpu_ignores_capture_step_and_runs_the_same_step_eagerly():
    # The rule: capture happens only in a GPU's warm-up, and the CPU has no warm-up.
    bench = PreparedRecipe(override(SGD, ["capture_step=true"]), "cpu", synthetic_cifar(), seed=0)
    bench.warmup(Listener())
    assert bench.prepared.step.graphs is None
    result = bench.run(0, 1, Listener())
    assert not result.diverged and result.tta_acc > 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("recipe", [SGD, MUON], ids=["sgd", "muon"])
def test_a_captured_step_replays_what_the_eager_step_does_on_a_gpu(recipe):
    torch.manual_seed(0)
    eager_run = prepared(override(recipe, ["capture_step=false", "compile=false"]), "cuda")
    captured_run = prepared(override(recipe, ["capture_step=true", "compile=false"]), "cuda")
    eager, captured = eager_run.step, captured_run.step          # fp16, channels-last
    eager_net, captured_net = eager_run.net, captured_run.net
    captured.capture(recipe.total_steps())   # its warm-up steps moved the weights: start again
    captured_net.load_state_dict(eager_net.state_dict())
    eager.reset()
    images, labels = random_batch(override(recipe, [f"batch_size={3 * recipe.batch_size}"]), 0)
    images, labels = images.cuda().half(), labels.cuda()
    batches = torch.randperm(len(labels), device="cuda").view(3, -1)
    for i in range(FREEZE + 3):
        losses = []
        for step in (eager, captured):
            step.load(images, labels, batches[i % 3])
            losses.append(step().float())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-3, atol=1e-3)
    assert captured.graphs is not None and not captured_net.whiten.bias.requires_grad
    for a, b in zip(eager_net.state_dict().values(), captured_net.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-3)
    assert eager.correct.item() == pytest.approx(captured.correct.item(), abs=len(labels))


def test_the_forward_pass_and_the_loss_trace_into_one_graph():
    from torch._dynamo.testing import CompileCounter

    net = prepared(MUON).net
    images, labels = random_batch(MUON, 0)
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(forward_loss, backend=counter)
    loss, logits = compiled(net, images, labels, 32, 0.2)
    assert counter.frame_count == 1                  # no graph break between them
    eager_loss, eager_logits = forward_loss(net, images, labels, 32, 0.2)
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(logits, eager_logits)


def test_a_compiling_execution_compiles_the_forward_pass_with_the_loss(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append((fn, kw)) or fn)
    how = dataclasses.replace(execution(MUON, "cpu"), compile=True,
                              compile_mode="max-autotune-no-cudagraphs")
    prepared(MUON, how=how)
    assert (forward_loss, {"mode": "max-autotune-no-cudagraphs", "dynamic": False}) in compiled


def test_each_epoch_trains_at_its_resolution_and_the_variants_say_which():
    recipe = override(MUON, ["image_sizes=16,24,32"])       # 8 steps an epoch, 3 epochs
    run = prepared(recipe)
    step = run.step
    assert [step.variant(s) for s in (0, 7, 8, 15, 16, 23)] == [
        (16, False), (16, False), (24, True), (24, True), (32, True), (32, True)]
    seen = []
    run.net.whiten.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    step.reset()
    images, labels = random_batch(recipe, 0)
    step.load(images, labels, torch.arange(len(labels)))
    for _ in range(recipe.total_steps()):
        step()
    assert seen == [16] * 8 + [24] * 8 + [32] * 8
    # One size past the list's end: the last holds.
    assert prepared(override(MUON, ["image_sizes=24"])).step.variant(23) == (24, True)
