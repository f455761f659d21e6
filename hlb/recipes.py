"""Every hyperparameter of a training recipe, in one typed object with its unit and its range.

`Recipe` declares the fields: each is a `knob`, its type, the values it allows and its unit,
declared together; building a Recipe checks every field and the rules that tie fields together,
and names the key, the value and what is allowed in a one-line UsageError. The named recipes
(RECIPES, at the end) are written whole, or derived visibly from one named parent, so that an
edit to one changes that one and its children alone. A new field is one line in `Recipe` and
its value in each whole recipe. Text such as `--set key=value` is parsed on the command-line
side (hlb.bench.overrides). Why a value is what it is lives beside the code that uses it.

Learning rates are plain: what each parameter group's optimizer multiplies its step by at the
peak of the schedule, for the summed loss (hlb.step.summed_loss), as airbench94_muon writes
them. airbench94/95/96 wrote SGD in David Page's decoupled units (per 1024 examples,
independent of momentum); `from_decoupled` turns those into these, once, where a recipe is
written.
"""

import dataclasses
import math
from dataclasses import dataclass

from hlb.augment import AUGMENTATIONS
from hlb.errors import UsageError
from hlb.knobs import FLAG, Ints, Names, OneOf, Span, field_problems, knob
from hlb.model import ACTIVATIONS
from hlb.optim import SCHEDULES

IMAGE_SIDE = 32                  # CIFAR-10 images are 32 x 32 pixels
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPHED_COMPILE_MODES = ("reduce-overhead", "max-autotune")   # inductor's own CUDA graphs
LR = Span(0, 1e12, lo_open=True)  # a learning rate


@dataclass(frozen=True)
class Recipe:
    name: str
    target: float = knob(Span(0, 1))   # the mean TTA accuracy it is built to reach

    # Data and its augmentation (hlb.augment)
    train_images: int = knob(Span(1, CIFAR_TRAIN))  # used, from the start of the set
    test_images: int = knob(Span(1, CIFAR_TEST))    # evaluated, from the start
    batch_size: int = knob(Span(1, CIFAR_TRAIN))    # images per step (a partial one dropped)
    epochs: float = knob(Span(0, 1000, lo_open=True))  # passes over the training images
    augment: tuple = knob(Names(AUGMENTATIONS))     # per-epoch transforms, in order
    translate: int = knob(Span(1, IMAGE_SIDE - 1))  # crop: pixels of shift, reflect-padded
    flip: str = knob(OneOf(("alternate", "random")))  # flip: by epoch, or a coin
    cutout: int = knob(Span(1, IMAGE_SIDE))         # cutout: pixels a side of the square
    jitter_brightness: float = knob(Span(0, 10))    # jitter: shift, normalised units
    jitter_contrast: float = knob(Span(0, 1))       # jitter: scale change, a fraction
    clean_epochs: int = knob(Span(0, 1000))         # last epochs with the flip alone
    image_sizes: tuple = knob(Ints((1, 16), 16, IMAGE_SIDE))  # px per epoch, last holds

    # Network (hlb.model)
    widths: tuple = knob(Ints(3, 1, 4096))          # channels of the three conv groups
    convs_per_group: int = knob(OneOf((2, 3)))      # 3: a third conv and a residual
    activation: str = knob(OneOf(ACTIVATIONS))      # every activation of the network
    whiten_kernel: int = knob(Span(1, IMAGE_SIDE - 7))  # pixels a side of a whitening patch
    whiten_eps: float = knob(Span(1e-12, 1e6))      # added to the patch eigenvalues
    whiten_init_images: int = knob(Span(1, CIFAR_TRAIN))  # whose patches set it
    bn_momentum: float = knob(Span(0, 1, lo_open=True))  # weight of a new batch's stats
    bn_eps: float = knob(Span(1e-12, 1))
    logit_scale: float = knob(Span(1e-6, 1e3))      # multiplies the head's output

    # Optimizers and schedule (hlb.optim). Learning rates: per step at the schedule's peak.
    optimizer: str = knob(OneOf(("sgd", "muon")))   # muon: Muon for the conv filters
    head_lr: float = knob(LR)           # SGD: the head (and the conv filters under sgd)
    bias_lr: float = knob(LR)           # SGD: the BatchNorm biases
    whiten_bias_lr: float = knob(LR)    # SGD: the whitening layer's bias
    momentum: float = knob(Span(0, 1, hi_open=True))  # SGD's, Nesterov
    weight_decay: float = knob(Span(0, 1))  # SGD: share of each weight removed per step, peak
    label_smoothing: float = knob(Span(0, 1))
    schedule: str = knob(OneOf(SCHEDULES))  # the learning rate's shape after the warm-up
    warmup_frac: float = knob(Span(0, 1, hi_open=True))  # share of steps warming up
    lr_start: float = knob(Span(0, 100))            # lr multiplier at step 0
    lr_end: float = knob(Span(0, 100))              # lr multiplier at the last step
    whiten_bias_epochs: float = knob(Span(0, 1000))  # it trains this long, then freezes
    whiten_bias_own_schedule: bool = knob(FLAG)     # its lr reaches lr_end at the freeze
    lookahead_every: int = knob(Span(0, 10_000))    # steps between Lookahead pulls; 0 off
    lookahead_decay: float = knob(Span(0, 1))       # per step, times (step/total)^ramp
    lookahead_ramp: float = knob(Span(0, 100))      # 1 linear, larger = later pulls
    muon_lr: float = knob(Span(1e-6, 100))          # relative to filters at norm sqrt(out)
    muon_momentum: float = knob(Span(0, 1, hi_open=True))  # Nesterov
    muon_weight_decay: float = knob(Span(0, 1))     # decoupled, times muon's lr, per step
    muon_ns_steps: int = knob(Span(1, 100))         # Newton-Schulz iterations per step

    # Evaluation (hlb.evaluate)
    tta_level: int = knob(OneOf((0, 1, 2)))         # 0 plain, 1 +mirror, 2 +1-px shifts
    tta_fraction: float = knob(Span(0, 1, lo_open=True))  # least confident get the views
    tta_mirror_weight: float = knob(Span(0, 1))     # of each view's weight, to its mirror
    tta_shifted_weight: float = knob(Span(0, 1))    # level 2: the two shifts' share
    eval_batch_size: int = knob(Span(1, 100_000))   # images per evaluation forward pass

    # Execution on a GPU (hlb.execution; a CPU always runs fp32, eagerly, the same math)
    precision: str = knob(OneOf(("fp16", "bf16", "fp32")))  # BatchNorm stays fp32
    channels_last: bool = knob(FLAG)
    compile: bool = knob(FLAG)                      # torch.compile, in the warm-up
    compile_mode: str = knob(OneOf(COMPILE_MODES))
    capture_step: bool = knob(FLAG)                 # each step a CUDA graph, replayed

    def __post_init__(self):
        validate(self)

    def steps_per_epoch(self):
        return self.train_images // self.batch_size

    def total_steps(self):
        # Round up, with a tolerance so that 2.0 epochs of 48 steps is 96 steps, not 97.
        return max(1, math.ceil(self.steps_per_epoch() * self.epochs - 1e-9))

    def epoch_count(self):
        """The epochs a run starts (the last one cut short when `epochs` has a fraction)."""
        return math.ceil(self.total_steps() / self.steps_per_epoch())

    def to_dict(self):
        return dataclasses.asdict(self)


def _links(r):
    """Rules that tie fields together: (key, whether it holds, what is allowed)."""
    return [
        ("batch_size", r.batch_size <= r.train_images,
         f"at most train_images ({r.train_images})"),
        ("whiten_init_images", r.whiten_init_images <= r.train_images,
         f"at most train_images ({r.train_images})"),
        ("augment", "crop" not in r.augment or r.augment[0] == "crop",
         "crop first, if listed (it reads the padded images)"),
        # The three 2x pools need 8 pixels left after the whitening patches.
        ("whiten_kernel", r.whiten_kernel <= min(r.image_sizes) - 7,
         f"at most the smallest of image_sizes minus 7 ({min(r.image_sizes) - 7})"),
        # A captured step cannot hold a network that captures CUDA graphs of its own.
        ("capture_step", not (r.capture_step and r.compile
                              and r.compile_mode in GRAPHED_COMPILE_MODES),
         f"false with compile_mode={r.compile_mode}, or a compile_mode without CUDA graphs "
         "(default, max-autotune-no-cudagraphs)"),
    ]


def validate(recipe):
    """Raise one UsageError naming every value outside its field's range (then the rules
    between fields)."""
    problems = field_problems(recipe) or [
        f"{key}={getattr(recipe, key)!r}: expected {allowed}"
        for key, holds, allowed in _links(recipe) if not holds]
    if problems:
        raise UsageError(f"recipe {recipe.name!r}: " + "; ".join(problems))


def from_decoupled(lr, momentum, weight_decay, batch_size, bias_scaler):
    """airbench94/95/96's SGD values (David Page's decoupled units) as a recipe's plain fields.

    There, `lr` and `weight_decay` are per 1024 examples of the summed loss and independent of
    momentum: with Nesterov momentum m a steady gradient moves a weight about 1 + 1/(1-m)
    times the raw step, so the raw per-step rate is lr / (1024 (1 + 1/(1-m))). The BatchNorm
    biases get `bias_scaler` times it, with the same decay per step; the whitening bias and the
    head (and, without Muon, the conv filters) the rate itself. `weight_decay` there is per
    example of the batch, so the share removed per step scales with `batch_size`.
    """
    examples = 1024 * (1 + 1 / (1 - momentum))      # what `lr` and `weight_decay` are "per"
    head_lr = lr / examples
    return dict(head_lr=head_lr, bias_lr=head_lr * bias_scaler, whiten_bias_lr=head_lr,
                momentum=momentum, weight_decay=weight_decay * batch_size / examples)


# airbench94_muon's method (Keller Jordan), in its numbers, captured and compiled, with selective
# TTA from hiverge's cifar10-speedrun: 94.035% in 1.3945 s on an H200 (n=37, one-sided p=0.033
# above 94%; 0.819 of airbench94_muon's time in the same call), measured at 181efb7, before
# its learning rates were written as airbench's rounded values (BENCHMARKS.md, 2026-12-06).
R94 = Recipe(
    name="94", target=0.94,
    train_images=50_000, test_images=10_000, batch_size=2000, epochs=8.0,  # 200 steps
    augment=("crop", "flip"), translate=2, flip="alternate", clean_epochs=0, image_sizes=(32,),
    cutout=12, jitter_brightness=0.14, jitter_contrast=0.13,   # unused: not in `augment`
    widths=(64, 256, 256), convs_per_group=2, activation="gelu",
    whiten_kernel=2, whiten_eps=5e-4, whiten_init_images=5000,
    bn_momentum=0.4,                    # airbench's "0.6": its convention is 1 - ours
    bn_eps=1e-12,
    # airbench94_muon divides the logits by the width (256) after rescaling the head's weights
    # to unit std; we multiply by 1/9 after PyTorch's init, nearly the same start and the same
    # step on the logits for its head_lr 0.67: 0.67 / 256^2 = 8.28e-4 / 9^2.
    logit_scale=1 / 9, head_lr=8.28e-4,
    optimizer="muon", bias_lr=0.053, whiten_bias_lr=0.053, momentum=0.85,
    weight_decay=2e-6 * 2000,           # airbench94_muon's wd: 2e-6 x the batch size
    label_smoothing=0.2, schedule="linear", warmup_frac=0.0, lr_start=1.0, lr_end=0.0,
    whiten_bias_epochs=3.0, whiten_bias_own_schedule=True,
    lookahead_every=0, lookahead_decay=0.95, lookahead_ramp=3.0,
    muon_lr=0.24, muon_momentum=0.6, muon_weight_decay=0.0, muon_ns_steps=3,
    tta_level=2, tta_fraction=0.25, tta_mirror_weight=0.5, tta_shifted_weight=0.5,
    eval_batch_size=2000,
    precision="fp16", channels_last=True, compile=True, compile_mode="default",
    capture_step=True,
)

# The airbench94 paper's method (legacy/airbench94.py: SGD, Lookahead), hyp in its decoupled
# units: 94.02% in 2.875 s on an H100 (n=50, 2026-11-26). The parent of 95, 96 and smoke.
SGD94 = Recipe(
    name="94sgd", target=0.94,
    train_images=50_000, test_images=10_000, batch_size=1024, epochs=9.9,  # 476 steps
    augment=("crop", "flip"), translate=2, flip="alternate", clean_epochs=0, image_sizes=(32,),
    cutout=12, jitter_brightness=0.14, jitter_contrast=0.13,   # unused: not in `augment`
    widths=(64, 256, 256), convs_per_group=2, activation="gelu",
    whiten_kernel=2, whiten_eps=5e-4, whiten_init_images=5000,
    bn_momentum=0.4, bn_eps=1e-12, logit_scale=1 / 9,
    optimizer="sgd",
    **from_decoupled(lr=11.5, momentum=0.85, weight_decay=0.0153, batch_size=1024,
                     bias_scaler=64),
    label_smoothing=0.2, schedule="linear", warmup_frac=0.23, lr_start=0.2, lr_end=0.07,
    whiten_bias_epochs=3.0, whiten_bias_own_schedule=False,
    lookahead_every=5, lookahead_decay=0.95, lookahead_ramp=3.0,
    muon_lr=0.24, muon_momentum=0.6, muon_weight_decay=0.0, muon_ns_steps=3,  # unused: sgd
    tta_level=2, tta_fraction=1.0, tta_mirror_weight=0.5, tta_shifted_weight=0.5,
    eval_batch_size=2000,
    precision="fp16", channels_last=True, compile=False, compile_mode="default",
    capture_step=False,
)

# hiverge's cifar10-speedrun tuning of the Muon method, in our form (batch 1536, 245 steps,
# SiLU, colour jitter, uniform TTA weights). Not yet measured on a GPU.
TUNED94 = Recipe(
    name="94tuned", target=0.94,
    train_images=50_000, test_images=10_000, batch_size=1536, epochs=7.65,  # 245 steps
    augment=("crop", "flip", "jitter"), translate=2, flip="alternate", clean_epochs=0,
    image_sizes=(32,), cutout=12, jitter_brightness=0.14, jitter_contrast=0.13,
    widths=(64, 256, 256), convs_per_group=2, activation="silu",
    whiten_kernel=2, whiten_eps=5e-4, whiten_init_images=960,
    bn_momentum=0.4434, bn_eps=1e-12,
    logit_scale=1 / 9, head_lr=6.69e-4,  # hiverge's 0.5415 in airbench's form (see R94)
    optimizer="muon", bias_lr=0.0573, whiten_bias_lr=0.0573, momentum=0.825,
    weight_decay=0.0016,                # hiverge's 1.0418e-6 x the batch size
    label_smoothing=0.09, schedule="linear", warmup_frac=0.0, lr_start=1.0, lr_end=0.0,
    whiten_bias_epochs=0.22,            # 7 steps
    whiten_bias_own_schedule=True,
    lookahead_every=0, lookahead_decay=0.95, lookahead_ramp=3.0,
    muon_lr=0.205, muon_momentum=0.655, muon_weight_decay=0.0016, muon_ns_steps=3,
    tta_level=2, tta_fraction=0.25, tta_mirror_weight=0.5,
    tta_shifted_weight=2 / 3,           # the six views weigh the same
    eval_batch_size=2000,
    precision="fp16", channels_last=True, compile=True, compile_mode="default",
    capture_step=True,
)

_replace = dataclasses.replace

RECIPES = {
    "94": R94,
    "94sgd": SGD94,
    "94tuned": TUNED94,
    # airbench95 (legacy/airbench95.py): 94sgd wider, lr 10.0 (decoupled) for 15 epochs. Not
    # yet measured here (airbench95 reports 10.4 s on an A100).
    "95": _replace(SGD94, name="95", target=0.95, widths=(128, 384, 384), epochs=15.0,
                   **from_decoupled(lr=10.0, momentum=0.85, weight_decay=0.0153,
                                    batch_size=1024, bias_scaler=64)),
    # airbench96 (June 2024, legacy/airbench96.py): three convs per group with a residual,
    # stronger augmentation, 37 epochs. Not yet measured here (it reports 34.7 s on an A100).
    "96": _replace(
        SGD94, name="96", target=0.96, epochs=37.0, translate=4,
        augment=("crop", "flip", "cutout"), cutout=12, widths=(128, 384, 512),
        convs_per_group=3,
        bn_momentum=0.1,                # PyTorch's default: slower running stats
        **from_decoupled(lr=9.0, momentum=0.85, weight_decay=0.012, batch_size=1024,
                         bias_scaler=64),
        warmup_frac=0.1, lr_start=0.2,  # as in airbench96's source
        lr_end=0.0),
    # About 30 s a run on two CPU cores: 94sgd narrow, on a fifth of the data, two epochs.
    "smoke": _replace(
        SGD94, name="smoke", target=0.5, train_images=10_000, test_images=2_000,
        batch_size=200, epochs=2.0, widths=(24, 48, 48), whiten_init_images=2000,
        **from_decoupled(lr=8.0, momentum=0.85, weight_decay=0.0153, batch_size=200,
                         bias_scaler=64),
        warmup_frac=0.2, lookahead_every=0, eval_batch_size=1000),
}


def get_recipe(name):
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]
