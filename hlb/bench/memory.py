"""An estimate of a recipe's peak GPU memory, from its values, as named terms (MiB).

    python scripts/memory.py [RECIPE] [key=value ...]

The peak reserved memory (torch.cuda.max_memory_reserved) is what a run holds throughout (the
uint8 images, the network and its optimizer state, the step's input buffers, the captured
step's graph pool, library workspaces) plus its largest moment:
  normalise  the normalised training set and a chunk of fp32;
  whiten     both normalised sets and the whitening layer's patches in fp32;
  pad        both sets and the reflect-padded training copy;
  augment    the padded copy, the epoch's augmented copy and a chunk of the crop's or flip's;
  evaluate   the padded copy and one forward pass at eval_batch_size;
  step       (eager only; a captured step keeps these in its pool) one step's activations;
plus the allocator's blocks that later sizes cannot reuse. The CUDA context and the libraries'
kernels sit outside the allocator: on the card, not in "reserved".

Activations are counted per layer from the widths and the image size: what autograd keeps for
the backward pass (eager: every conv's and BatchNorm's input, the max-pool's input and int64
indices; compiled: inductor keeps the pool's output with int8 offsets and each later conv's
output and recomputes the rest, an approximation), plus two activations of the largest layer
(its gradients) during backward.

Calibration, one measurement: on 2026-12-04 an H200 ran recipe 94 (commit 181efb7, compiled,
captured) at 1670 MiB allocated and 4778 MiB reserved, with whole-set temporaries when
normalising and augmenting and with the warm-up's caches still held (`estimate(recipe,
before=True)` is that code). WORKSPACE_MIB is the allocated remainder; WARMUP_CACHES_MIB the
reserved remainder, taken to be cuDNN's benchmark workspaces and the compile's caches, which
the warm-up now gives back. Were it instead slack that grows with the data (the other reading
the one figure allows), recipe 94 would need about 0.9 GiB more than estimated here.
"""

import dataclasses
from dataclasses import dataclass

import torch

from hlb.augment import CHUNK_IMAGES
from hlb.execution import PRECISIONS
from hlb.model import Net
from hlb.recipes import IMAGE_SIDE

MIB = 2**20
PIXELS = 3 * IMAGE_SIDE * IMAGE_SIDE       # values per image
WORKSPACE_MIB = 159.0     # workspaces and the rest: 1670 MiB allocated, measured, less the
                          # 1511 MiB of the terms below for that code (estimate(before=True))
FRAGMENTATION = 0.15      # of the largest moment: freed blocks that later sizes cannot reuse
                          # (0.12 walking the caching allocator through that code by hand)
WARMUP_CACHES_MIB = 1300.0  # 4778 MiB reserved, measured, less every other term of that code
CONTEXT_MIB = 500.0       # CUDA context and libraries' kernels, outside the allocator
LIBRARIES_MIB = 300.0     # the part loaded after a pre-training check (cuDNN, cuBLAS, Triton)


@dataclass(frozen=True)
class Term:
    name: str
    mib: float


@dataclass
class Estimate:
    """Terms held through the run, each moment's terms (the largest moment counts), the
    allocator's unusable blocks, and what the card holds outside the allocator."""
    recipe: object
    held: list
    moments: dict           # moment -> [Term]
    unusable: Term
    card: list

    @property
    def peak_moment(self):
        return max(self.moments, key=lambda m: sum(t.mib for t in self.moments[m]))

    @property
    def reserved_mib(self):
        """The predicted peak of torch.cuda.max_memory_reserved."""
        return (sum(t.mib for t in self.held + self.moments[self.peak_moment])
                + self.unusable.mib)

    @property
    def card_mib(self):
        """Reserved plus the CUDA context and libraries: what the card must have."""
        return self.reserved_mib + sum(t.mib for t in self.card)


def _mib(values, nbytes):
    return values * nbytes / MIB


def _groups(recipe, size):
    """Per conv group: (channels in, channels out, side of its input) at `size` pixels."""
    k = recipe.whiten_kernel
    channels, side = 6 * k * k, size - k + 1
    for width in recipe.widths:
        yield channels, width, side
        channels, side = width, (side - side % 2) // 2


def activations(recipe, compiled):
    """Per image at the largest training resolution: (values kept for backward, bytes of the
    pool indices kept, the largest single activation, the largest conv's input plus output).
    """
    size = max(recipe.image_sizes)
    whitened = 6 * recipe.whiten_kernel**2 * (size - recipe.whiten_kernel + 1) ** 2
    saved, index_bytes, largest, conv = whitened, 0, whitened, 0
    for c_in, c_out, side in _groups(recipe, size):
        kept = side - side % 2                      # ConvBeforePool's output side
        padded = c_in * (kept + 2) ** 2             # its padded input
        before_pool, after_pool = c_out * kept**2, c_out * (kept // 2) ** 2
        largest, conv = max(largest, padded, before_pool), max(conv, padded + before_pool)
        if compiled:    # the pool's output and each later conv's output; int8 pool offsets
            saved += after_pool * recipe.convs_per_group
            index_bytes += after_pool
        else:           # conv and pool inputs, then BatchNorm, activation and conv inputs
            saved += padded + before_pool + after_pool * (2 + 3 * (recipe.convs_per_group - 1))
            index_bytes += after_pool * 8
    return saved, index_bytes, largest, conv


def _step(recipe, nbytes):
    """One training step's working memory: a captured step's graph pool, or an eager step's."""
    saved, index_bytes, largest, _ = activations(recipe, recipe.compile)
    batch = recipe.batch_size
    how = "compiled" if recipe.compile else "eager"
    return [Term(f"step: activations kept for backward ({how}, batch {batch})",
                 _mib(saved * batch, nbytes)),
            Term("step: max-pool " + ("int8 offsets" if recipe.compile else "int64 indices"),
                 _mib(index_bytes * batch, 1)),
            Term("step: gradients of the largest layer", _mib(2 * largest * batch, nbytes))]


def _held(recipe, nbytes, step):
    with torch.device("meta"):                  # shapes only: nothing initialised
        params = sum(p.numel() for p in Net(recipe).parameters())
    images = recipe.train_images + recipe.test_images
    held = [Term("uint8 images, train and test", _mib(images * PIXELS, 1)),
            Term("labels (int64)", _mib(images, 8)),
            # weights and gradients in the run's dtype; fp32 optimizer state, Lookahead's copy
            Term("network, gradients, optimizer state",
                 _mib(params, 2 * nbytes + 4 * (1 + bool(recipe.lookahead_every)))),
            Term("step input buffers", _mib(recipe.batch_size * PIXELS, nbytes)),
            Term("library workspaces (calibrated)", WORKSPACE_MIB)]
    return held + (step if recipe.capture_step else [])


def _moments(recipe, nbytes, step, before):
    """The run's moments of largest use: name -> [Term]."""
    n, m, side = recipe.train_images, recipe.test_images, IMAGE_SIDE
    pad = recipe.translate if "crop" in recipe.augment else 0
    chunk, wide = min(n, CHUNK_IMAGES), 3 * side * (side + 2 * pad)   # wide: a row-cropped image
    train = Term("normalised training set", _mib(n * PIXELS, nbytes))
    test = Term("normalised test set", _mib(m * PIXELS, nbytes))
    padded = Term("reflect-padded training copy", _mib(n * 3 * (side + 2 * pad) ** 2, nbytes))
    augmented = Term("the epoch's augmented copy", _mib(n * PIXELS, nbytes))
    k, w = recipe.whiten_kernel, recipe.whiten_init_images
    whitening = Term("whitening: the images in fp32 and their patches",
                     _mib(w * PIXELS + w * (side - k + 1) ** 2 * 3 * k * k, 4))
    if before:      # two fp32 copies of the whole set; the crop's and the flip's clones
        normalising = [Term("normalising: two fp32 copies of the set", _mib(2 * n * PIXELS, 4))]
        clones = Term("crop and flip: clones of the set", max(_mib(n * wide, nbytes),
                                                              2 * train.mib))
    else:           # a chunk in fp32 written into the result; a chunk of rows, of mirrors
        normalising = [train, Term("normalising: a chunk in fp32", _mib(chunk * PIXELS, 4))]
        clones = Term("crop or flip: a chunk", _mib(chunk * max(wide, PIXELS), nbytes))
    _, _, _, conv = activations(recipe, recipe.compile)
    moments = {
        "normalise": normalising,
        "whiten": [train, test, whitening],
        "pad": [train, test, padded],
        "augment": [test, padded, augmented, clones],
        "evaluate": [test, padded, Term(f"forward at eval_batch_size {recipe.eval_batch_size}",
                                        _mib(conv * recipe.eval_batch_size, nbytes))]}
    if not recipe.capture_step:
        moments["step"] = [test, padded, augmented] + step
    return moments


def estimate(recipe, before=False):
    """The Estimate of `recipe` on a GPU, as hlb.execution runs it there. `before`: the code
    of the one measurement (whole-set temporaries, the warm-up's caches kept)."""
    nbytes = PRECISIONS[recipe.precision].itemsize
    step = _step(recipe, nbytes)
    held = _held(recipe, nbytes, step)
    if before:      # kept by the warm-up then; its empty_cache() gives them back now
        held = held + [Term("warm-up: benchmark and compile caches (calibrated)",
                            WARMUP_CACHES_MIB)]
        if recipe.capture_step:     # its eager steps ran on a stream of their own
            held.append(Term("warm-up: eager steps' blocks", sum(t.mib for t in step)))
    moments = _moments(recipe, nbytes, step, before)
    peak = max(sum(t.mib for t in terms) for terms in moments.values())
    return Estimate(recipe, held, moments,
                    Term(f"allocator: blocks not reusable ({FRAGMENTATION:g} x the largest "
                         "moment)", FRAGMENTATION * peak),
                    [Term("CUDA context and libraries (outside reserved)", CONTEXT_MIB)])


def free_gpu_memory(device):
    """(free, total) bytes of `device` as the driver reports them, or None off CUDA (the one
    query of the card here, which tests replace)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.mem_get_info(torch.device(device))


def needed_mib(recipe):
    """What the card must have free before training: the estimate, and the libraries that
    load after this check (the context is made by then)."""
    return estimate(recipe).reserved_mib + LIBRARIES_MIB


def _smaller(recipe, free_mib):
    """The recipe with batch_size and eval_batch_size halved together until it fits in
    `free_mib`, or None if nothing does."""
    while recipe.batch_size > 1:
        recipe = dataclasses.replace(recipe, batch_size=recipe.batch_size // 2,
                                     eval_batch_size=max(1, recipe.eval_batch_size // 2))
        if needed_mib(recipe) <= free_mib:
            return recipe
    return None


def fit_note(recipe, device):
    """One line when `device` has less free memory than `recipe` needs by the estimate, with
    settings that fit; None when it has enough or is no GPU. A note, not a refusal: the
    estimate rests on one measurement, and a run that does not fit still ends in one line."""
    memory = free_gpu_memory(device)
    if memory is None:
        return None
    free, need = memory[0] / MIB, needed_mib(recipe)
    if need <= free:
        return None
    text = (f"recipe {recipe.name} needs about {need / 1024:.1f} GiB of GPU memory by "
            f"scripts/memory.py's estimate; {free / 1024:.1f} GiB is free on {device}")
    smaller = _smaller(recipe, free)
    if smaller is None:
        return text + "; try --device cpu, or free the GPU"
    return (text + f"; --set batch_size={smaller.batch_size} --set eval_batch_size="
            f"{smaller.eval_batch_size} fits (a smaller batch trains differently)")


def print_fit_notes(recipes, device):
    """fit_note of each recipe, printed as a note, before any data is loaded."""
    for recipe in recipes:
        note = fit_note(recipe, device)
        if note:
            print(f"note: {note}", flush=True)
