"""How a recipe runs on a device, decided once: the one place that asks "is this a GPU?".

What the device reports is read by one function, `device_facts` (tests replace it): the kind
of device, CUDA's compute capability or ROCm's architecture, whether Triton imports, and
which GPU architectures the installed torch has kernels for. From those:

- A GPU runs the recipe's execution settings (precision, channels-last, compile, a captured
  step) after an untimed warm-up, and checks for divergence once per epoch (reading a loss
  waits for the device), with what the card cannot do turned off and said in `notes`:
  compile needs Triton, which compiles for sm_70 and newer (native Windows has none), and
  then the captured step stays; Muon's Newton-Schulz runs in bf16 only where bf16 is native
  (sm_80 and newer, some ROCm GPUs), else in fp16 on tensor cores (sm_70, sm_75, ROCm) or in
  fp32; `precision=bf16` is refused where bf16 is not native; ROCm runs no captured step (a
  failed hipGraph capture can end the process, which no fallback catches).
- Apple's MPS runs the CPU's math (fp32, eager) on its GPU, with a warm-up and a read per
  epoch as on a GPU. Not run on a Mac here.
- A CPU runs the same math eagerly in fp32, with no warm-up, and checks every step (a read
  costs nothing there).
"""

from dataclasses import dataclass

import torch

from hlb.errors import UsageError

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_NAMES = {dtype: name for name, dtype in PRECISIONS.items()}
# ROCm architectures whose matrix units take bf16: MI100, MI200, MI300, MI350, Radeon RX 7000
# and 9000. The others (MI50/60, RX 6000) would emulate it.
ROCM_BF16 = ("gfx908", "gfx90a", "gfx94", "gfx95", "gfx11", "gfx12")


@dataclass(frozen=True)
class DeviceFacts:
    """What a device reports about itself (device_facts reads it; tests make their own)."""
    kind: str                   # "cuda" (NVIDIA or ROCm), "mps" or "cpu"
    capability: tuple = None    # CUDA's compute capability, (major, minor); None elsewhere
    hip_arch: str = None        # ROCm's architecture ("gfx90a"); None on NVIDIA
    triton: bool = False        # Triton imports (compile's GPU code generator)
    kernels: tuple = ()         # the GPU architectures torch was built for: get_arch_list()
    name: str = ""              # the device's name, for the notes

    @property
    def rocm(self):
        return self.hip_arch is not None

    @property
    def bf16_native(self):
        if self.rocm:
            return self.hip_arch.startswith(ROCM_BF16)
        return self.capability is not None and self.capability >= (8, 0)

    def __str__(self):
        if self.rocm:
            return f"ROCm {self.hip_arch} ({self.name})"
        return f"sm_{self.capability[0]}{self.capability[1]} ({self.name})"


def device_facts(device):
    """The DeviceFacts of `device`, asked of torch: the one place that queries the card."""
    kind = torch.device(device).type
    if kind != "cuda":
        return DeviceFacts(kind)
    props = torch.cuda.get_device_properties(device)
    hip_arch = props.gcnArchName.split(":")[0] if torch.version.hip else None
    return DeviceFacts(kind, (props.major, props.minor), hip_arch, _triton_imports(),
                       tuple(torch.cuda.get_arch_list()), props.name)


def _triton_imports():
    try:
        import triton  # noqa: F401
    except Exception:       # absent (native Windows), or broken by a mismatched install
        return False
    return True


@dataclass(frozen=True)
class Execution:
    device: str                 # "cuda", "cuda:3" (one GPU of many), "mps" or "cpu"
    cuda: bool
    dtype: torch.dtype          # weights and activations; BatchNorm stays fp32
    memory_format: torch.memory_format   # of the network's weights and input images
    compile: bool               # torch.compile the network (with the loss, for training)
    compile_mode: str
    capture: bool               # replay each training step as a CUDA graph
    warmup: bool                # one untimed run first (cudnn autotuning, compile, capture)
    check_each_step: bool       # divergence read every step, not once per epoch
    orthogonalize_dtype: torch.dtype     # Muon's Newton-Schulz iteration: bf16 is fast on a GPU
    notes: tuple = ()           # what was chosen on this device and why, one line each

    @property
    def kind(self):
        """"cuda", "mps" or "cpu"."""
        return torch.device(self.device).type

    def chosen(self):
        """What a record keeps of it, as JSON values."""
        return {"dtype": DTYPE_NAMES[self.dtype], "compile": self.compile,
                "capture": self.capture,
                "orthogonalize_dtype": DTYPE_NAMES[self.orthogonalize_dtype],
                "notes": list(self.notes)}


def execution(recipe, device):
    """The Execution of `recipe` on `device`, from what the device reports (device_facts).
    A UsageError for a setting the card cannot run (bf16 where it is not native)."""
    facts = device_facts(device)
    if facts.kind == "cuda":
        return _gpu_execution(recipe, str(device), facts)
    mps = facts.kind == "mps"
    # MPS: the CPU's math. Its fp16 would keep BatchNorm in fp32 beside fp16 activations, a
    # mix nobody here could try on a Mac; fp32 is the path every op here has on MPS.
    note = ("mps: fp32, eager (no compile, no captured step): the CPU's math on the Apple GPU"
            if mps else "cpu: fp32, eager, divergence read at every step")
    return Execution(
        device=str(device), cuda=False, dtype=torch.float32,
        memory_format=torch.contiguous_format, compile=False, compile_mode=recipe.compile_mode,
        capture=False, warmup=mps, check_each_step=not mps,
        orthogonalize_dtype=torch.float32, notes=(note,))


def _gpu_execution(recipe, device, facts):
    if recipe.precision == "bf16" and not facts.bf16_native:
        raise UsageError(f"precision=bf16: {facts} has no native bf16 (NVIDIA has it from "
                         "sm_80, the A100 and RTX 30); use --set precision=fp16")
    notes = []
    compiles = recipe.compile and _triton_compiles(facts, notes)
    capture = recipe.capture_step and not facts.rocm
    if recipe.capture_step and facts.rocm:
        notes.append("captured step off on ROCm: a failed hipGraph capture can end the "
                     "process, where no fallback can catch it")
    orthogonalize = _orthogonalize_dtype(facts, notes)
    chosen = (f"{facts}: {recipe.precision}, {'compiled' if compiles else 'not compiled'}, "
              f"{'captured step' if capture else 'eager step'}, Newton-Schulz in "
              f"{DTYPE_NAMES[orthogonalize]}")
    layout = torch.channels_last if recipe.channels_last else torch.contiguous_format
    return Execution(
        device=device, cuda=True, dtype=PRECISIONS[recipe.precision], memory_format=layout,
        compile=compiles, compile_mode=recipe.compile_mode, capture=capture, warmup=True,
        check_each_step=False, orthogonalize_dtype=orthogonalize, notes=(chosen, *notes))


def _triton_compiles(facts, notes):
    """Whether compile's code generator, Triton, can work here; if not, a note says why."""
    if not facts.triton:
        notes.append("compile off: Triton is not installed (native Windows has none; "
                     "pip install triton where it exists); the captured step is kept")
        return False
    if not facts.rocm and facts.capability < (7, 0):
        notes.append("compile off: Triton compiles for sm_70 and newer; the captured step "
                     "is kept")
        return False
    return True


def _orthogonalize_dtype(facts, notes):
    """Newton-Schulz's dtype: bf16 where it is native, else fp16 on tensor cores (normalised
    in fp32: hlb.optim.newton_schulz), else fp32."""
    if facts.bf16_native:
        return torch.bfloat16
    if facts.rocm or facts.capability >= (7, 0):
        notes.append("Newton-Schulz in fp16, not bf16: bf16 is not native here (emulated, "
                     "and a compiled bf16 cast fails before sm_80)")
        return torch.float16
    notes.append("Newton-Schulz in fp32: no tensor cores before sm_70 to speed up fp16")
    return torch.float32


# Variants of a function that dynamo keeps compiled in one process (torch's default, 8, is
# passed by a sweep of a few widths: past it dynamo runs the function eagerly, silently).
RECOMPILE_LIMIT = 64


def compiled(fn, mode="default"):
    """`fn` through torch.compile with static shapes: a second batch or image size gets the
    code a fresh process would compile for it, as a sweep's timing needs (dynamo would make one
    symbolic-shape graph of it, other kernels), and there is room for many of them."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(fn, mode=mode, dynamic=False)


def has_kernels(capability, arch_list):
    """Whether torch built for `arch_list` (get_arch_list(): "sm_86", "compute_90", ...) runs
    on a card of `capability`. Binary code for sm_XY runs on X.Y and later minors of X
    ("sm_90a" on 9.0 alone); PTX for compute_XY is compiled on loading, on X.Y or later."""
    for arch in arch_list:
        kind, _, code = arch.partition("_")
        digits = code.rstrip("af")
        if not digits.isdigit() or len(digits) < 2:
            continue
        built = (int(digits[:-1]), int(digits[-1]))
        if kind == "compute" and built <= capability:
            return True
        if kind == "sm" and (built == capability or not code.endswith("a")
                             and built[0] == capability[0] and built[1] <= capability[1]):
            return True
    return False


def missing_kernels(device):
    """One line saying what to install when the installed torch has no kernels for the CUDA
    card `device`, else None (ROCm and builds that list nothing are not checked)."""
    facts = device_facts(device)
    if facts.kind != "cuda" or facts.rocm or not facts.kernels:
        return None
    if has_kernels(facts.capability, facts.kernels):
        return None
    if facts.capability < (7, 5):     # from torch 2.11 only cu126 keeps Maxwell to Volta
        wheel, index = "the cu126 wheel (the last with sm_50 to sm_70)", "cu126"
    else:
        wheel, index = "a wheel built for it (cu130: sm_75 to sm_120)", "cu130"
    return (f"the installed torch {torch.__version__} has no kernels for this GPU, {facts}: "
            f"it was built for {' '.join(facts.kernels)}; install {wheel}: pip install "
            f"--force-reinstall torch --index-url https://download.pytorch.org/whl/{index}; "
            "or run on the CPU with --device cpu")
