"""One training step with the same operations at every step, so a CUDA graph can replay it.

A step is: forward, the label-smoothed loss, backward, every optimizer with its learning rate
read from a table on the device (hlb.optim.Schedule), BatchNorm's running statistics, and
on-device sums of the loss and of the correct answers. No operation in it waits for the host,
and nothing in it changes from one step to the next, except at the whitening bias's freeze:
the run has two variants of the step, before and after, and on a GPU each is its own graph.

With `capture_step` on a GPU, the warm-up (hlb.bench.runs.PreparedRecipe.warmup) calls `capture()`,
and from then on each call replays a graph. Everywhere else the same code runs eagerly.
"""

import torch
import torch.nn.functional as F

from hlb.model import compute_dtype, input_memory_format
from hlb.optim import Schedule, make_optimizers, zero_state

IMAGE_SHAPE = (3, 32, 32)                   # CIFAR-10: channels, height, width


def summed_loss(logits, labels, label_smoothing):
    """The batch's label-smoothed cross-entropy, summed over images, computed in fp32.

    In fp16 the sum overflows: the smoothing term adds up every class's log-probability over
    the batch, which passes fp16's largest value (65504) at batch 2000 once the logits spread
    (recipe 94muon's second epoch). The gradients stayed finite, but the loss read inf and
    every run was reported as diverged.
    """
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing,
                           reduction="sum")


class TrainStep:
    """The training step of one network, made once and reset per run.

    Call `reset()` at a run's start, `load(images, labels, index)` to fill the step's own
    input buffers with a batch, then call the step; it returns the batch's summed loss as a
    device tensor. `epoch_means()` reads and clears the sums of loss and correct answers.
    """

    def __init__(self, net, recipe, device, forward=None):
        self.recipe = recipe
        self.net = net
        self.forward = net if forward is None else forward
        self.label_smoothing = recipe.label_smoothing
        self.batch_size = recipe.batch_size
        # The whitening bias trains for its first steps, then stays fixed; its learning rate
        # may follow the schedule's shape over those steps alone (see Schedule).
        self.freeze_at = recipe.whiten_bias_steps()
        self._freeze(False)
        self.optimizers = make_optimizers(net, recipe)
        self.schedule = Schedule(self.optimizers, recipe, self.freeze_at, device)
        # Fixed input buffers: a graph reads its inputs from the same addresses every time.
        self.images = torch.zeros(self.batch_size, *IMAGE_SHAPE, device=device,
                                  dtype=compute_dtype(recipe, device)).contiguous(
                                      memory_format=input_memory_format(recipe, device))
        self.labels = torch.zeros(self.batch_size, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.taken = 0                      # steps taken this run (the host's count)
        self.summed = 0                     # steps in the sums
        self.graphs = None                  # per variant (unfrozen, frozen): (graph, loss)

    def reset(self):
        """Start of a run: optimizer state, counters and sums back to zero, in place."""
        zero_state(self.optimizers)
        self.schedule.reset()
        self.loss_sum.zero_()
        self.correct.zero_()
        self.taken = self.summed = 0
        self._freeze(False)

    def load(self, images, labels, index):
        """Gather the batch `index` of the epoch's images and labels into the step's inputs."""
        torch.index_select(images, 0, index, out=self.images)
        torch.index_select(labels, 0, index, out=self.labels)

    def __call__(self):
        frozen = self.taken >= self.freeze_at
        if frozen != self.frozen:          # once a run, at the freeze
            self._freeze(frozen)
        self.taken += 1
        self.summed += 1
        if self.graphs is None:
            return self._step()
        graph, loss = self.graphs[frozen]
        graph.replay()
        return loss

    def epoch_means(self):
        """(mean loss per image, accuracy) over the steps since the last call, which clears
        the sums. Reading them waits for the device: call it outside the timed region."""
        images = self.summed * self.batch_size
        means = self.loss_sum.item() / images, self.correct.item() / images
        self.loss_sum.zero_()
        self.correct.zero_()
        self.summed = 0
        return means

    def capture(self, warmup_steps=3):
        """GPU only: record both variants as CUDA graphs, which every later call replays.

        Each variant first runs a few eager steps on a side stream, as torch's capture rules
        ask (cudnn autotuning, compilation and lazy set-up happen there, not in the graph).
        This changes the weights and state: a run's `reset()` starts it afresh.
        """
        assert self.images.is_cuda, "capture needs a CUDA device"
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for frozen in (False, True):
                self._freeze(frozen)
                for _ in range(warmup_steps):
                    self.schedule.reset()   # keeps the step counter inside the table
                    self._step()
        torch.cuda.current_stream().wait_stream(side)
        graphs, pool = [], None
        for frozen in (False, True):
            self._freeze(frozen)
            graph = torch.cuda.CUDAGraph()
            # The two graphs share one pool, so one's replay may overwrite the loss the
            # other returned: read a step's loss before the next step (the GPU never does).
            with torch.cuda.graph(graph, pool=pool):
                loss = self._step()
            pool = graph.pool()
            graphs.append((graph, loss))
        self.graphs = graphs
        self.reset()

    def _freeze(self, frozen):
        # Without a gradient the bias drops out of backward and of its optimizer's step.
        self.net.whiten.bias.requires_grad_(not frozen)
        self.frozen = frozen

    def _step(self):
        out = self.forward(self.images)
        loss = summed_loss(out, self.labels, self.label_smoothing)
        loss.backward()
        self.schedule.advance()
        for optimizer in self.optimizers:
            optimizer.step()
        self.net.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.loss_sum += loss.float()
            self.correct += (out.argmax(1) == self.labels).sum()
        return loss.detach()
