"""How a recipe runs on a device, decided once: the one place that asks "is this a GPU?".

A GPU runs the recipe's execution settings (precision, channels-last, compile, a captured
step) after an untimed warm-up, and checks for divergence once per epoch (reading a loss
waits for the device). A CPU runs the same math eagerly in fp32, with no warm-up, and checks
every step (a read costs nothing there).
"""

import dataclasses
from dataclasses import dataclass

import torch

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Execution:
    device: str                 # "cuda", "cuda:3" (one GPU of many) or "cpu"
    cuda: bool
    dtype: torch.dtype          # weights and activations; BatchNorm stays fp32
    memory_format: torch.memory_format   # of the network's weights and input images
    compile: bool               # torch.compile the network (with the loss, for training)
    compile_mode: str
    capture: bool               # replay each training step as a CUDA graph
    warmup: bool                # one untimed run first (cudnn autotuning, compile, capture)
    check_each_step: bool       # divergence read every step, not once per epoch
    orthogonalize_dtype: torch.dtype     # Muon's Newton-Schulz iteration: bf16 is fast on a GPU

    def eager(self):
        """The same, without compile and capture: what a GPU falls back to when they fail."""
        return dataclasses.replace(self, compile=False, capture=False)


def execution(recipe, device):
    """The Execution of `recipe` on `device`."""
    cuda = torch.device(device).type == "cuda"
    layout = torch.channels_last if cuda and recipe.channels_last else torch.contiguous_format
    return Execution(
        device=str(device),
        cuda=cuda,
        dtype=PRECISIONS[recipe.precision] if cuda else torch.float32,
        memory_format=layout,
        compile=cuda and recipe.compile,
        compile_mode=recipe.compile_mode,
        capture=cuda and recipe.capture_step,
        warmup=cuda,
        check_each_step=not cuda,
        orthogonalize_dtype=torch.bfloat16 if cuda else torch.float32,
    )
