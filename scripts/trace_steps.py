"""Step by step through the start of one run, to find where a diverging run first goes wrong.

    python scripts/trace_steps.py [--recipe 94] [--set key=value ...] [--steps 60]
                                  [--data-dir DIR] [--device cuda|cpu]

Each step prints the batch's loss per image, and the largest |value| among the modules'
outputs, the gradients and the weights, each with where it is. The trace stops at the first
step with a value that is not finite, naming every place that has one, or after --steps.
It runs the recipe's own training step eagerly (no compile, no captured graph: hooks watch
the modules) and reads the device at every step, so it is slow and nothing in it is timed.

It found, on 2026-11-27, that 94muon's runs on an H100 were reported as diverged because
their loss alone read inf at some steps (an fp16 sum), while every gradient and weight
stayed finite.
"""

import argparse
import dataclasses
import math
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlb.bench.runs import checked_call, load_data  # noqa: E402
from hlb.errors import HlbError, UsageError  # noqa: E402
from hlb.model import reset  # noqa: E402
from hlb.train import prepare  # noqa: E402


class Watch:
    """The largest |value| of each module's output, each gradient (as the optimizers see it)
    and each weight, in the last step."""

    def __init__(self, net, optimizers):
        self.net = net
        self.outputs, self.grads = {}, {}
        self.names = {p: name for name, p in net.named_parameters()}
        for name, module in net.named_modules():
            if not list(module.children()):
                module.register_forward_hook(partial(self._output, name))
        for optimizer in optimizers:
            optimizer.register_step_pre_hook(self._gradients)

    def _output(self, name, module, inputs, output):
        self.outputs[name] = output.detach().abs().amax().float()

    def _gradients(self, optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.grads[self.names[p]] = p.grad.abs().amax().float()

    def largest(self):
        """{kind: {place: largest |value|}} of the last step, read from the device."""
        weights = {name: p.detach().abs().amax().float()
                   for name, p in self.net.named_parameters()}
        found = {"out": self.outputs, "grad": self.grads, "weight": weights}
        self.outputs, self.grads = {}, {}
        return {kind: {k: v.item() for k, v in values.items()} for kind, values in found.items()}


def step_line(taken, loss, largest):
    """(the step's line, the places whose values are not finite)."""
    bad = ["loss"] if not math.isfinite(loss) else []
    parts = [f"step {taken:4d}  loss/image {loss:8.4f}"]
    for kind, values in largest.items():
        bad += [f"{kind} {k}" for k, v in values.items() if not math.isfinite(v)]
        finite = {k: v for k, v in values.items() if math.isfinite(v)}
        if finite:
            place = max(finite, key=finite.get)
            parts.append(f"max |{kind}| {place} {finite[place]:.4g}")
    if bad:
        parts.append("not finite: " + ", ".join(bad))
    return "  ".join(parts), bad


def traced(recipe, cifar, device):
    """The recipe prepared on `device` to run eagerly: no compile, no captured graph."""
    return prepare(dataclasses.replace(recipe, compile=False, capture_step=False), cifar,
                   device)


def trace(run, steps, seed=0, out=print):
    """Train a prepared run (`traced`) from a fresh start for at most `steps` steps, printing
    each through `out`. Returns (the first step with a value that is not finite, or None;
    the steps taken)."""
    net, step = run.net, run.step
    torch.manual_seed(seed)
    reset(net)
    step.reset()
    watch = Watch(net, run.optimizers)
    batches, _ = run.prepare_data()
    run.lookahead.start()
    limit = min(steps, run.recipe.total_steps())
    epoch = 0
    while step.steps_taken < limit:
        images, batch_indices = batches.epoch(epoch)
        for index in batch_indices:
            step.load(images, batches.labels, index)
            loss = step().float().item() / len(index)
            run.lookahead.after_step(step.steps_taken)
            line, bad = step_line(step.steps_taken, loss, watch.largest())
            out(line)
            if bad:
                return step.steps_taken, step.steps_taken
            if step.steps_taken >= limit:
                break
        epoch += 1
    return None, step.steps_taken


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="94")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--steps", type=int, default=60, help="steps to trace at most (default 60)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    try:
        if args.steps < 1:
            raise UsageError(f"--steps must be at least 1, not {args.steps}")
        recipe, device = checked_call(args.recipe, 1, args.device, args.set)
        run = traced(recipe, load_data(args.data_dir), device)
    except HlbError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"recipe {recipe.name} on {device}, traced eagerly")
    first_bad, taken = trace(run, args.steps)
    if first_bad is None:
        print(f"every value finite through step {taken}")
    else:
        print(f"first value that is not finite at step {first_bad} (listed on its line)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
