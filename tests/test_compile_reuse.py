"""One compile for every variant of the same shapes (hlb.model, hlb.step): a recipe that
changes only values reuses the compiled code of the first one in the process, and gets its own
values' results.

Most tests compile with the aot_eager backend, which goes through Dynamo's frames and guards
(where a value held as a constant would compile again) and AOT autograd, without inductor's
code generation; one test compiles with inductor itself, as a GPU does.
"""

import dataclasses
import sys

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import hlb.bench.runs
from conftest import synthetic_cifar
from hlb.bench.cli import main
from hlb.bench.overrides import override
from hlb.execution import compiled, execution
from hlb.optim import compiled_orthogonalize_all
from hlb.recipes import RECIPES
from hlb.step import summed_loss
from hlb.train import prepare

train = sys.modules["hlb.train"]        # the module: hlb.train is the Python API's function

# 8 steps an epoch; the whitening bias freezes after 2, so 3 steps meet both of its variants.
TINY = ["train_images=128", "test_images=64", "batch_size=16", "epochs=1.0", "widths=8,8,8",
        "whiten_init_images=64", "eval_batch_size=64", "whiten_bias_epochs=0.25"]
BASE = override(RECIPES["94"], TINY)
# Every value that a compiled forward pass or loss reads, and the optimizers' values.
VALUES = ["logit_scale=0.3", "label_smoothing=0.05", "bn_momentum=0.2", "head_lr=0.002",
          "bias_lr=0.1", "whiten_bias_lr=0.01", "momentum=0.7", "weight_decay=0.01",
          "muon_lr=0.3", "muon_momentum=0.7"]
VARIANT = override(BASE, VALUES)
STEPS = 3


@pytest.fixture(autouse=True)
def nothing_compiled():
    """Each test starts with nothing compiled and leaves nothing behind (the compiled
    Newton-Schulz iteration is kept per process). One thread: on tensors this small a second
    one only waits, and on a busy machine the waits cost several times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    compiled_orthogonalize_all.cache_clear()
    yield
    torch._dynamo.reset()
    compiled_orthogonalize_all.cache_clear()
    torch.set_num_threads(threads)


def counting(monkeypatch, backend):
    """torch.compile with `backend` (the mode dropped: it is inductor's), counting the graphs
    Dynamo hands it; returns the counter."""
    counter = CompileCounterWithBackend(backend)
    real = torch.compile
    monkeypatch.setattr(torch, "compile",
                        lambda fn, mode=None, **kw: real(fn, backend=counter, **kw))
    return counter


def prepared(recipe, compile):
    how = dataclasses.replace(execution(recipe, "cpu"), compile=compile)
    return prepare(recipe, synthetic_cifar(64, 32), "cpu", how)


def train_steps(run, seed=0):
    """STEPS steps of `run` on one fixed batch; the summed losses."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(run.recipe.batch_size, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (run.recipe.batch_size,), generator=g)
    run.step.reset()
    run.step.load(images, labels, torch.arange(len(labels)))
    return torch.stack([run.step() for _ in range(STEPS)])


def evaluated(run):
    """The logits of the evaluation's forward pass (compiled when the run compiles)."""
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    run.net.eval()
    with torch.no_grad():
        logits = run.forward(images)
    run.net.train()
    return logits


def same_start(*runs):
    """The same weights and running statistics in every run's network."""
    for run in runs[1:]:
        run.net.load_state_dict(runs[0].net.state_dict())


def assert_same_state(net, other):
    for (name, a), b in zip(net.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_the_label_smoothed_sum_is_torchs_cross_entropy():
    logits, labels = torch.randn(6, 10) * 3, torch.arange(6)
    for smoothing in (0.0, 0.2, torch.tensor(0.2)):
        torch.testing.assert_close(summed_loss(logits, labels, smoothing), F.cross_entropy(
            logits, labels, label_smoothing=float(smoothing), reduction="sum"))


def test_a_variant_of_values_reuses_the_compiled_code_and_gets_its_values_results(monkeypatch):
    counter = counting(monkeypatch, "aot_eager")
    first = prepared(BASE, compile=True)
    train_steps(first)
    evaluated(first)
    compiled = counter.frame_count
    # The step's forward and loss before and after the freeze, Muon's Newton-Schulz iteration
    # and the evaluation's forward pass, each in one graph.
    assert compiled == 4

    reused, eager, eager_base = (prepared(VARIANT, compile=True),
                                 prepared(VARIANT, compile=False), prepared(BASE, compile=False))
    same_start(reused, eager, eager_base)
    losses = train_steps(reused)
    torch.testing.assert_close(losses, train_steps(eager))
    assert_same_state(reused.net, eager.net)      # the updates and the BatchNorm statistics
    torch.testing.assert_close(evaluated(reused), evaluated(eager))
    assert counter.frame_count == compiled        # nothing new was compiled
    # The values matter: the first recipe's values give other results.
    assert not torch.allclose(train_steps(eager_base), losses)


def inductor_graphs():
    """The graphs inductor compiled (or loaded from its cache on disk) in this process."""
    return sum(counters["inductor"][k] for k in ("fxgraph_cache_miss", "fxgraph_cache_hit",
                                                 "fxgraph_cache_bypass"))


def test_with_inductor_a_second_variant_compiles_nothing_new():
    # Inductor's own code, as on a GPU, for the evaluation's forward pass: compiling the
    # training step too would cost a minute on two cores. The test above follows the step
    # through Dynamo and AOT autograd, which hand inductor its graphs.
    start = counters["frames"]["ok"], inductor_graphs()
    first = prepared(BASE, compile=True)
    base_logits = evaluated(first)
    compiled = counters["frames"]["ok"], inductor_graphs()
    assert compiled == (start[0] + 1, start[1] + 1)
    reused, eager = prepared(VARIANT, compile=True), prepared(VARIANT, compile=False)
    same_start(first, reused, eager)
    logits = evaluated(reused)
    torch.testing.assert_close(logits, evaluated(eager))
    assert (counters["frames"]["ok"], inductor_graphs()) == compiled
    assert not torch.allclose(logits, base_logits)          # the logit scale differs


@pytest.fixture
def synthetic_data(monkeypatch):
    data = synthetic_cifar(128, 64)
    monkeypatch.setattr(hlb.bench.runs, "load_cifar10", lambda *args, **kwargs: data)


ARM = " ".join(f"--set {change}" for change in TINY + ["augment=crop,flip,jitter"])
OTHER = " ".join(f"--set {change}" for change in VALUES + [
    "epochs=1.5", "tta_fraction=0.5", "tta_mirror_weight=0.3", "tta_shifted_weight=0.6",
    "jitter_brightness=0.3", "jitter_contrast=0.2"])


@pytest.mark.parametrize("command", [
    ["compare", "--a", ARM, "--b", f"{ARM} {OTHER}", "--runs", "2"],
    ["sweep", *ARM.split(), "--cell", OTHER, "--runs", "3"],     # a sweep's fewest runs
], ids=["compare", "sweep"])
def test_the_commands_that_run_several_variants_compile_once(command, synthetic_data,
                                                            monkeypatch, capsys):
    # Dynamo's frames and guards are what would compile again; the eager backend has them.
    counter = counting(monkeypatch, "eager")
    real_execution, real_warmup = train.execution, train.PreparedRun.warmup
    after_warmups = []

    def compiling(recipe, device):          # as on a GPU: compiled, with a warm-up
        return dataclasses.replace(real_execution(recipe, device), compile=True, warmup=True)

    def warmup(self):
        seconds = real_warmup(self)
        after_warmups.append(counter.frame_count)
        return seconds

    monkeypatch.setattr(train, "execution", compiling)
    monkeypatch.setattr(train.PreparedRun, "warmup", warmup)
    assert main([*command, "--recipe", "94", "--device", "cpu", "--no-save"]) == 0
    assert "note: compile" not in capsys.readouterr().out      # no fallback to eager
    # The first arm's warm-up compiled everything; the other arms and every run, nothing.
    assert len(after_warmups) >= 2 and after_warmups[0] >= 3
    assert after_warmups == [after_warmups[0]] * len(after_warmups)
    assert counter.frame_count == after_warmups[0]


def _doubled_sum(x):
    return (x * 2).sum()


def test_a_second_shape_compiles_static_code_as_a_fresh_process_would(monkeypatch):
    """Dynamo would turn a second batch size into one symbolic-shape graph (other kernels than
    a fresh process compiles, so a sweep over batch_size would time other code); compiled()
    keeps every shape static."""
    symbolic = []

    def backend(gm, example_inputs):
        symbolic.append(any(isinstance(x, torch.SymInt) for x in example_inputs))
        return gm.forward
    real = torch.compile
    monkeypatch.setattr(torch, "compile",
                        lambda fn, mode=None, **kw: real(fn, backend=backend, **kw))
    doubled = compiled(_doubled_sum)
    for n in (4, 6, 8):
        assert doubled(torch.ones(n)).item() == 2 * n
    assert symbolic == [False, False, False]
    assert torch._dynamo.config.recompile_limit >= 64
