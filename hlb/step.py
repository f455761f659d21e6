"""One training step with the same operations at every step, so a CUDA graph can replay it.

A step is: forward and the label-smoothed loss (one compiled graph when compiling), backward,
every optimizer with its learning rate read from a table on the device (hlb.optim.Schedule),
BatchNorm's running statistics, and on-device sums of the loss and of the correct answers. No
operation in it waits for the host, and nothing in it changes from one step to the next
except at the whitening bias's freeze and where the training resolution changes
(`image_sizes`): each such variant of the step is its own graph on a GPU.

With a captured step (hlb.execution), the warm-up (hlb.train.PreparedRun.warmup) calls
`capture()`, and from then on each call replays a graph. Everywhere else the same code runs
eagerly.

The compiled graph reads every value a recipe may change (label smoothing here, the logit
scale and BatchNorm's momentum in hlb.model) from a tensor, so that a recipe of the same shapes
with other values, later in the same process, reuses it and compiles nothing.
"""

import torch
import torch.nn.functional as F

from hlb.execution import compiled
from hlb.optim import zero_state
from hlb.recipes import IMAGE_SIDE


def summed_loss(logits, labels, label_smoothing):
    """The batch's label-smoothed cross-entropy, summed over images, computed in fp32.

    The same sum as F.cross_entropy(..., label_smoothing, reduction="sum"), written out so
    that `label_smoothing` may be a 0-dim tensor (torch's takes a float, which a compiled step
    would hold as a constant and compile again for each new value).

    In fp16 the sum overflows: the smoothing term adds up every class's log-probability over
    the batch, which passes fp16's largest value (65504) at batch 2000 once the logits spread
    (recipe 94muon's second epoch). The gradients stayed finite, but the loss read inf and
    every run was reported as diverged.
    """
    log_probs = logits.float().log_softmax(1)
    nll = -log_probs.gather(1, labels[:, None]).sum()       # the true class's share
    uniform = -log_probs.mean(1).sum()                       # the share spread over classes
    return (1 - label_smoothing) * nll + label_smoothing * uniform


def forward_loss(net, images, labels, size, label_smoothing):
    """(summed loss, logits) of a batch seen at `size` pixels a side: the images are scaled
    down (bilinear) when the recipe trains at a lower resolution in this epoch."""
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear",
                               align_corners=False)
    logits = net(images)
    return summed_loss(logits, labels, label_smoothing), logits


class TrainStep:
    """The training step of one network, made once and reset per run.

    Call `reset()` at a run's start, `load(images, labels, index)` to fill the step's own
    input buffers with a batch, then call the step; it returns the batch's summed loss as a
    device tensor. `epoch_means()` reads and clears the sums of loss and correct answers.
    """

    def __init__(self, net, recipe, execution, optimizers, schedule, freeze):
        self.net, self.optimizers, self.schedule, self.freeze = net, optimizers, schedule, freeze
        # A tensor, so that a compiled step serves every value (see summed_loss).
        self.label_smoothing = torch.tensor(recipe.label_smoothing, device=execution.device)
        self.batch_size = recipe.batch_size
        self.steps_per_epoch = recipe.steps_per_epoch()
        self.image_sizes = recipe.image_sizes
        self.forward_loss = forward_loss
        if execution.compile:       # the forward pass and the loss as one graph
            self.forward_loss = compiled(forward_loss, execution.compile_mode)
        # Fixed input buffers: a graph reads its inputs from the same addresses every time.
        self.images = torch.zeros(self.batch_size, 3, IMAGE_SIDE, IMAGE_SIDE,
                                  device=execution.device, dtype=execution.dtype).contiguous(
                                      memory_format=execution.memory_format)
        self.labels = torch.zeros(self.batch_size, dtype=torch.long, device=execution.device)
        self.loss_sum = torch.zeros((), device=execution.device)
        self.correct = torch.zeros((), dtype=torch.long, device=execution.device)
        self.steps_taken = 0                # this run's steps so far (the host's count)
        self.steps_in_sums = 0              # steps since epoch_means() last cleared the sums
        self.graphs = None                  # {(size, frozen): (graph, its loss tensor)}

    def reset(self):
        """Start of a run: optimizer state, counters and sums back to zero, in place."""
        zero_state(self.optimizers)
        self.schedule.reset()
        self.loss_sum.zero_()
        self.correct.zero_()
        self.steps_taken = self.steps_in_sums = 0
        self.freeze.set(False)

    def load(self, images, labels, index):
        """Gather the batch `index` of the epoch's images and labels into the step's inputs."""
        torch.index_select(images, 0, index, out=self.images)
        torch.index_select(labels, 0, index, out=self.labels)

    def variant(self, step):
        """(training resolution, whether the whitening bias is frozen) at `step`."""
        epoch = min(step // self.steps_per_epoch, len(self.image_sizes) - 1)
        return self.image_sizes[epoch], self.freeze.frozen_at(step)

    def __call__(self):
        size, frozen = self.variant(self.steps_taken)
        if frozen != self.freeze.frozen:          # once a run, at the freeze
            self.freeze.set(frozen)
        self.steps_taken += 1
        self.steps_in_sums += 1
        if self.graphs is None:
            return self._step(size)
        graph, loss = self.graphs[size, frozen]
        graph.replay()
        return loss

    def epoch_means(self):
        """(mean loss per image, accuracy) over the steps since the last call, which clears
        the sums. Reading them waits for the device: call it outside the timed region."""
        images = self.steps_in_sums * self.batch_size
        means = self.loss_sum.item() / images, self.correct.item() / images
        self.loss_sum.zero_()
        self.correct.zero_()
        self.steps_in_sums = 0
        return means

    def capture(self, total_steps, warmup_steps=3):
        """GPU only: record every variant a run of `total_steps` meets as a CUDA graph, which
        every later call replays.

        Each variant first runs a few eager steps on a side stream, as torch's capture rules
        ask (cudnn autotuning, compilation and lazy set-up happen there, not in the graph).
        This changes the weights and state: a run's `reset()` starts it afresh.
        """
        assert self.images.is_cuda, "capture needs a CUDA device"
        variants = sorted({self.variant(step) for step in range(total_steps)})
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for size, frozen in variants:
                self.freeze.set(frozen)
                for _ in range(warmup_steps):
                    self.schedule.reset()   # keeps the step counter inside the table
                    self._step(size)
        torch.cuda.current_stream().wait_stream(side)
        graphs, pool = {}, None
        for size, frozen in variants:
            self.freeze.set(frozen)
            graph = torch.cuda.CUDAGraph()
            # The graphs share one pool, so one's replay may overwrite the loss another
            # returned: read a step's loss before the next step (the GPU never does).
            with torch.cuda.graph(graph, pool=pool):
                loss = self._step(size)
            pool = graph.pool()
            graphs[size, frozen] = graph, loss
        self.graphs = graphs
        self.reset()

    def _step(self, size):
        loss, out = self.forward_loss(self.net, self.images, self.labels, size,
                                      self.label_smoothing)
        loss.backward()
        self.schedule.advance()
        for optimizer in self.optimizers:
            optimizer.step()
        self.net.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.loss_sum += loss.float()
            self.correct += (out.argmax(1) == self.labels).sum()
        return loss.detach()
