"""Trained networks that outlive the run: save one to a file, load it back, evaluate it again.

The file is safetensors (https://huggingface.co/docs/safetensors): 8 bytes giving the length
N of a JSON header (little-endian), the N-byte header (each tensor's dtype, shape and byte
range, and a "__metadata__" map of strings), then the tensors' raw little-endian bytes.
Nothing in it is code, so reading it runs none, and the safetensors package and other
frameworks read it as it is. Written and read here by hand: the layout is that small, and
every way a file can be wrong becomes one line that says so. Our metadata: the format name,
the hlb version, the recipe, the run's results and the summary of its invocation, as JSON.
"""

import dataclasses
import json
import math
import os
import struct
from pathlib import Path

import torch

from hlb import __version__
from hlb.augment import normalize, to_device
from hlb.bench.report import jsonable
from hlb.bench.runs import load_data, resolve_device
from hlb.errors import HlbError, UsageError
from hlb.evaluate import plain_evaluation, tta_accuracy
from hlb.execution import execution
from hlb.files import write_atomic
from hlb.model import build_net
from hlb.recipes import Recipe, from_decoupled

FORMAT = "hlb-cifar10 model v1"
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER = 100_000_000        # bytes; the safetensors package's own limit
_HINT = "save one with --save-model PATH"


def _header(tensors, metadata):
    """The JSON header, padded with spaces so that the data starts 8-byte aligned."""
    entries, offset = {"__metadata__": metadata}, 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        entries[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    return header + b" " * (-(len(header) + 8) % 8)


def write_safetensors(path, tensors, metadata):
    """Write `tensors` (name -> tensor) and `metadata` (str -> str) to `path` atomically:
    a temporary file beside it, synced, then renamed, so no reader sees half a file."""
    tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    header = _header(tensors, metadata)

    def write(f):
        f.write(struct.pack("<Q", len(header)) + header)
        for t in tensors.values():
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())

    write_atomic(path, write)


def _refuse_code(path, head):
    """Name what a non-safetensors file is when it is a format that can run code on load."""
    if head.startswith(b"PK\x03\x04"):
        kind = "a zip archive (what torch.save writes, holding a pickle)"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        kind = "a pickle"
    else:
        return
    raise HlbError(f"{path} is {kind}: loading it could run code, so it is refused; {_HINT}")


def _read_header(path, f, size):
    head = f.read(8)
    length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
    if length is None or length > _MAX_HEADER or 8 + length > size:
        _refuse_code(path, head)
        if length is not None and length <= _MAX_HEADER:
            raise HlbError(f"{path} is truncated or not a saved model: its header claims "
                           f"{length} bytes, the file has {size}")
        raise HlbError(f"{path} is not a saved model (not safetensors); {_HINT}")
    raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        _refuse_code(path, head)
        raise HlbError(f"{path} is not a saved model (its header is not JSON); {_HINT}") \
            from None
    if not isinstance(header, dict):
        raise HlbError(f"{path} is not a saved model (its header is not a table); {_HINT}")
    return header, 8 + length


def _tensor(path, name, entry, data):
    """One tensor from its header entry; the checks make a bad entry one line, not a crash."""
    ok = isinstance(entry, dict) and entry.get("dtype") in _DTYPES and \
        isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)
    shape = entry.get("shape") if ok else None
    offsets = entry.get("data_offsets") if ok else None
    ok = ok and all(isinstance(n, int) and n >= 0 for n in shape) and len(offsets) == 2 and \
        all(isinstance(n, int) for n in offsets) and 0 <= offsets[0] <= offsets[1]
    if not ok:
        raise HlbError(f"{path}: tensor {name!r} has a malformed entry in the header")
    dtype = _DTYPES[entry["dtype"]]
    begin, end = offsets
    if end > len(data):
        raise HlbError(f"{path} is truncated: tensor {name!r} ends at byte {end} of the data, "
                       f"which has {len(data)}")
    count = math.prod(shape)
    if end - begin != count * dtype.itemsize:
        raise HlbError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape}")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    # A copy of its own bytes: aligned, writable, and independent of the file's buffer.
    return torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(shape)


def read_safetensors(path):
    """Return (tensors, metadata) from a safetensors file; any problem is one HlbError line."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header, start = _read_header(path, f, size)
            data = f.read()
    except FileNotFoundError:
        raise HlbError(f"no saved model at {path}; {_HINT}") from None
    except IsADirectoryError:
        raise HlbError(f"{path} is a folder, not a saved model; {_HINT}") from None
    except OSError as e:
        raise HlbError(f"cannot read {path} ({e.strerror or e})") from None
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HlbError(f"{path}: its __metadata__ is not a map of strings")
    return {k: _tensor(path, k, v, data) for k, v in header.items()}, metadata


def save(record, path):
    """Save the network of `record`'s last run (hlb.train's result) to `path`; return it."""
    if record.net is None or not record.results or record.results[-1].diverged:
        raise HlbError("no network to save: the last run diverged or did not finish")
    if record.results[-1].run != record.net_run:
        # A resumed invocation keeps runs that earlier ones trained: their weights are gone.
        raise HlbError(f"no network to save: run {record.results[-1].run} was trained by "
                       "an earlier invocation, and its weights were not kept")
    last = dataclasses.asdict(record.results[-1])
    del last["epochs"]
    return save_model(path, record.net, record.recipe, {
        **last, "device": record.device, "data_fingerprint": record.data_fingerprint,
        "summary": dataclasses.asdict(record.summary) if record.summary else None})


def save_model(path, net, recipe, run):
    """Write `net`'s weights and buffers (BatchNorm statistics too) as float32, exact for
    fp16 and bf16 weights, with `recipe` and `run` (a dict of results) as metadata."""
    path = Path(path)
    if not path.resolve().parent.is_dir():
        raise HlbError(f"cannot save the model to {path}: its folder does not exist")
    tensors = {k: v.float() if v.is_floating_point() else v
               for k, v in net.state_dict().items()}
    metadata = {"format": FORMAT, "hlb_version": __version__,
                "recipe": json.dumps(recipe.to_dict()), "run": json.dumps(jsonable(run))}
    try:
        write_safetensors(path, tensors, metadata)
    except OSError as e:
        raise HlbError(f"could not save the model to {path} ({e.strerror or e}); "
                       "nothing was left behind") from None
    return path


@dataclasses.dataclass
class Saved:
    net: torch.nn.Module    # in eval mode, on the device it was loaded for
    recipe: Recipe
    run: dict               # the run's results as the training reported them
    version: str            # the hlb version that saved it


def upgraded(values):
    """Recipe values saved before 2026-12-06, whose SGD rates were in decoupled units (`lr` and
    `weight_decay` per 1024 examples, `bias_lr_scale` and `whiten_bias_lr_scale` times `lr`),
    as the same rates in today's plain fields (and the one schedule shape there was)."""
    if "lr" not in values or "head_lr" in values:
        return values
    values = dict(values)
    lr, bias_scale, whiten_scale = (values.pop(key) for key in (
        "lr", "bias_lr_scale", "whiten_bias_lr_scale"))
    plain = from_decoupled(lr, values["momentum"], values["weight_decay"],
                           values["batch_size"], bias_scale)
    plain["whiten_bias_lr"] = plain["head_lr"] * whiten_scale
    values.update(plain)
    values.setdefault("schedule", "linear")
    return values


def _recipe(path, text):
    try:
        values = upgraded(json.loads(text))
        fields = {f.name for f in dataclasses.fields(Recipe)}
        for which, keys in (("unknown", set(values) - fields), ("missing", fields - set(values))):
            if keys:
                raise HlbError(f"{path} was saved by another hlb version ({which} recipe "
                               f"values {', '.join(sorted(keys))})")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return Recipe(**values)           # building it validates every value
    except (json.JSONDecodeError, TypeError, AttributeError, KeyError, ZeroDivisionError):
        raise HlbError(f"{path}: its recipe metadata is not a recipe") from None
    except UsageError as e:
        raise HlbError(f"{path}: its recipe is not valid ({e})") from None


def load_saved(path, device="cpu"):
    """Read a file written by save/save_model and rebuild its network on `device`."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT:
        raise HlbError(f"{path} is a safetensors file but not an hlb-cifar10 model "
                       f"(format {metadata.get('format')!r}); {_HINT}")
    recipe = _recipe(path, metadata.get("recipe", ""))
    net = build_net(recipe, execution(recipe, device))
    expected = net.state_dict()
    if set(tensors) != set(expected) or any(
            tensors[k].shape != expected[k].shape for k in expected):
        missing = sorted(set(expected) - set(tensors)) or sorted(set(tensors) - set(expected))
        raise HlbError(f"{path}: its weights do not fit the network of its recipe "
                       f"(first difference: {(missing or ['a shape'])[0]})")
    net.load_state_dict(tensors)          # copies, casting to the network's dtype
    net.eval()
    try:
        run = json.loads(metadata.get("run", "{}"))
    except json.JSONDecodeError:
        run = {}
    return Saved(net, recipe, run if isinstance(run, dict) else {},
                 metadata.get("hlb_version", "?"))


def load(path, device="cpu"):
    """The network saved at `path`, on `device`, in eval mode: ready for inference.

    It takes images normalised as in training: hlb.augment.normalize(uint8 NCHW, dtype)."""
    return load_saved(path, device).net


def _percent(value):
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "n/a"


def evaluate_saved(path, data_dir=None, device=None):
    """Evaluate a saved network on the test images of its recipe, as its run did; return the
    lines to print: plain and TTA accuracy, beside what the run reported."""
    device = resolve_device(device)
    saved = load_saved(path, device)
    recipe, run = saved.recipe, saved.run
    cifar = load_data(data_dir)
    data, how = to_device(cifar, recipe, device), execution(recipe, device)
    images = normalize(data.test_images, how.dtype).contiguous(memory_format=how.memory_format)
    plain, _ = plain_evaluation(saved.net, images, data.test_labels, recipe)
    tta = tta_accuracy(saved.net, images, data.test_labels, recipe)
    lines = [f"{path}: recipe {recipe.name}, saved by hlb {saved.version}, "
             f"{len(images)} test images on {device}",
             f"  plain accuracy {_percent(plain.item())}   TTA accuracy {_percent(tta.item())}",
             f"  the run reported: plain {_percent(run.get('val_acc'))}   "
             f"TTA {_percent(run.get('tta_acc'))} (on {run.get('device', '?')})"]
    if run.get("data_fingerprint") not in (None, cifar.fingerprint):
        lines.append("  note: the test data differ from the run's (another data fingerprint)")
    return lines
