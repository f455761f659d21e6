"""Every hyperparameter of a training recipe, in one typed object with its unit and its range.

A recipe is a frozen dataclass whose defaults are recipe 94; the other named recipes (RECIPES,
at the end) are the values they change. Each field is a `knob`: its default and the values it
allows, declared together; building a Recipe checks every field and the rules that tie fields
together, and names the key, the value and what is allowed in a one-line UsageError. A new
field is one line here: `name: type = knob(default, allowed)`. Text such as `--set key=value`
is parsed on the command-line side (hlb.bench.overrides). Why a value is what it is lives
beside the code that uses it.
"""

import dataclasses
import math
from dataclasses import dataclass

from hlb.augment import AUGMENTATIONS
from hlb.errors import UsageError
from hlb.knobs import FLAG, Ints, Names, OneOf, Span, field_problems, knob
from hlb.model import ACTIVATIONS

IMAGE_SIDE = 32                  # CIFAR-10 images are 32 x 32 pixels
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPHED_COMPILE_MODES = ("reduce-overhead", "max-autotune")   # inductor's own CUDA graphs


@dataclass(frozen=True)
class Recipe:
    name: str
    target: float = knob(0.94, Span(0, 1))   # the mean TTA accuracy it is built to reach

    # Data and its augmentation (hlb.augment)
    train_images: int = knob(50_000, Span(1, CIFAR_TRAIN))  # used, from the start of the set
    test_images: int = knob(10_000, Span(1, CIFAR_TEST))    # evaluated, from the start
    batch_size: int = knob(2000, Span(1, CIFAR_TRAIN))  # images per step (a partial one dropped)
    epochs: float = knob(8.0, Span(0, 1000, lo_open=True))  # passes over the training images
    augment: tuple = knob(("crop", "flip"), Names(AUGMENTATIONS))  # per-epoch transforms, in order
    translate: int = knob(2, Span(1, IMAGE_SIDE - 1))   # crop: pixels of shift, reflect-padded
    flip: str = knob("alternate", OneOf(("alternate", "random")))  # flip: by epoch, or a coin
    cutout: int = knob(12, Span(1, IMAGE_SIDE))         # cutout: pixels a side of the square
    jitter_brightness: float = knob(0.14, Span(0, 10))  # jitter: shift, normalised units
    jitter_contrast: float = knob(0.13, Span(0, 1))     # jitter: scale change, a fraction
    clean_epochs: int = knob(0, Span(0, 1000))          # last epochs with the flip alone
    image_sizes: tuple = knob((32,), Ints((1, 16), 16, IMAGE_SIDE))  # px per epoch, last holds

    # Network (hlb.model)
    widths: tuple = knob((64, 256, 256), Ints(3, 1, 4096))  # channels of the three conv groups
    convs_per_group: int = knob(2, OneOf((2, 3)))       # 3: a third conv and a residual
    activation: str = knob("gelu", OneOf(ACTIVATIONS))  # in the conv groups (hlb.model)
    whiten_kernel: int = knob(2, Span(1, IMAGE_SIDE - 7))  # pixels a side of a whitening patch
    whiten_eps: float = knob(5e-4, Span(1e-12, 1e6))    # added to the patch eigenvalues
    whiten_init_images: int = knob(5000, Span(1, CIFAR_TRAIN))  # whose patches set it
    bn_momentum: float = knob(0.4, Span(0, 1, lo_open=True))  # weight of a new batch's stats
    bn_eps: float = knob(1e-12, Span(1e-12, 1))
    logit_scale: float = knob(1 / 9, Span(1e-6, 1e3))   # multiplies the head's output

    # Optimizer and schedule (hlb.optim; decoupled: lr and decay do not move with momentum)
    optimizer: str = knob("muon", OneOf(("sgd", "muon")))  # muon: Muon for the conv filters
    lr: float = knob(6.5, Span(1e-6, 1e12))             # SGD, per 1024 examples, summed loss
    momentum: float = knob(0.85, Span(0, 1, hi_open=True))  # SGD's, Nesterov
    weight_decay: float = knob(0.0157, Span(0, 1e3))    # SGD's, per 1024 examples
    bias_lr_scale: float = knob(64.0, Span(1e-6, 1e6))  # BatchNorm biases' lr, times lr
    whiten_bias_lr_scale: float = knob(64.0, Span(1e-6, 1e6))  # the whitening bias's, times lr
    label_smoothing: float = knob(0.2, Span(0, 1))
    warmup_frac: float = knob(0.0, Span(0, 1, hi_open=True))  # share of steps warming up
    lr_start: float = knob(1.0, Span(0, 100))           # lr multiplier at step 0
    lr_end: float = knob(0.0, Span(0, 100))             # lr multiplier at the last step
    whiten_bias_epochs: float = knob(3.0, Span(0, 1000))  # it trains this long, then freezes
    whiten_bias_own_schedule: bool = knob(True, FLAG)   # its lr reaches lr_end at the freeze
    lookahead_every: int = knob(0, Span(0, 10_000))     # steps between Lookahead pulls; 0 off
    lookahead_decay: float = knob(0.95, Span(0, 1))     # per step, times (step/total)^ramp
    lookahead_ramp: float = knob(3.0, Span(0, 100))     # 1 linear, larger = later pulls
    muon_lr: float = knob(0.24, Span(1e-6, 100))        # relative to filters at norm sqrt(out)
    muon_momentum: float = knob(0.6, Span(0, 1, hi_open=True))  # Nesterov
    muon_weight_decay: float = knob(0.0, Span(0, 1))    # decoupled, times muon's lr, per step
    muon_ns_steps: int = knob(3, Span(1, 100))          # Newton-Schulz iterations per step

    # Evaluation (hlb.evaluate)
    tta_level: int = knob(2, OneOf((0, 1, 2)))          # 0 plain, 1 +mirror, 2 +1-px shifts
    tta_fraction: float = knob(0.25, Span(0, 1, lo_open=True))  # least confident get the views
    tta_mirror_weight: float = knob(0.5, Span(0, 1))    # of each view's weight, to its mirror
    tta_shifted_weight: float = knob(0.5, Span(0, 1))   # level 2: the two shifts' share
    eval_batch_size: int = knob(2000, Span(1, 100_000))  # images per evaluation forward pass

    # Execution on a GPU (hlb.execution; a CPU always runs fp32, eagerly, the same math)
    precision: str = knob("fp16", OneOf(("fp16", "bf16", "fp32")))  # BatchNorm stays fp32
    channels_last: bool = knob(True, FLAG)
    compile: bool = knob(True, FLAG)                    # torch.compile, in the warm-up
    compile_mode: str = knob("default", OneOf(COMPILE_MODES))
    capture_step: bool = knob(True, FLAG)               # each step a CUDA graph, replayed

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


# The airbench94 paper's method (SGD, Lookahead): 94.02% in 2.875 s on an H100 (n=50, 2026-11-26).
_SGD94 = Recipe(name="94sgd", batch_size=1024, epochs=9.9, optimizer="sgd", lr=11.5,
                weight_decay=0.0153, whiten_bias_lr_scale=1.0, whiten_bias_own_schedule=False,
                warmup_frac=0.23, lr_start=0.2, lr_end=0.07, lookahead_every=5,
                tta_fraction=1.0, compile=False, capture_step=False)
_replace = dataclasses.replace

RECIPES = {
    # airbench94_muon's method, captured and compiled, selective TTA: 94.035% in 1.3945 s on
    # an H200 (n=37, one-sided p=0.033 above 94%; 0.819 of airbench94_muon's time, same call).
    "94": Recipe(name="94"),
    "94sgd": _SGD94,
    # hiverge's cifar10-speedrun tuning, re-derived for ours (batch 1536, 245 steps, SiLU,
    # colour jitter, uniform TTA weights). Not yet measured on a GPU.
    "94tuned": Recipe(
        name="94tuned", batch_size=1536, epochs=7.65, label_smoothing=0.09,
        whiten_bias_epochs=0.22,            # 7 steps
        whiten_init_images=960, augment=("crop", "flip", "jitter"), activation="silu",
        bn_momentum=0.4434, momentum=0.825,
        lr=4.6, bias_lr_scale=85.6, whiten_bias_lr_scale=85.6,   # 0.5415 head, 0.0573 biases
        weight_decay=0.00716,               # 0.0016 of each weight per step at the peak
        muon_lr=0.205, muon_momentum=0.655, muon_weight_decay=0.0016,
        tta_shifted_weight=2 / 3),          # the six views weigh the same
    # airbench95: 94sgd wider, with a lower lr for 15 epochs. Not yet measured here (airbench95
    # reports 10.4 s on an A100).
    "95": _replace(_SGD94, name="95", target=0.95, widths=(128, 384, 384), lr=10.0,
                   epochs=15.0),
    # airbench96 (June 2024): three convs per group with a residual, stronger augmentation,
    # 37 epochs. Not yet measured here (airbench96 reports 34.7 s on an A100).
    "96": _replace(
        _SGD94, name="96", target=0.96, epochs=37.0, translate=4,
        augment=("crop", "flip", "cutout"), cutout=12, widths=(128, 384, 512),
        convs_per_group=3,
        bn_momentum=0.1,                    # PyTorch's default: slower running stats
        lr=9.0, weight_decay=0.012, warmup_frac=0.1,
        lr_start=0.2,                       # as in airbench96's source (legacy/airbench96.py)
        lr_end=0.0),
    # About 16 s a run on two CPU cores: 94sgd narrow, on a fifth of the data, two epochs.
    "smoke": _replace(
        _SGD94, name="smoke", target=0.5, train_images=10_000, test_images=2_000,
        batch_size=200, epochs=2.0, widths=(24, 48, 48), whiten_init_images=2000, lr=8.0,
        warmup_frac=0.2, lookahead_every=0, eval_batch_size=1000),
}


def get_recipe(name):
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]
