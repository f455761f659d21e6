"""The official CIFAR-10 batch files: checked against their MD5s, unpickled safely, decoded.

The python version of CIFAR-10 is seven pickles written by Python 2. Plain pickle would run
whatever code a doctored file names, so each file must match its official MD5 first and is
then read by an unpickler that admits nothing but numpy arrays.
"""

import functools
import hashlib
import io
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from hlb.errors import DataError
from hlb.files import reason

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
SOURCE_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
NUM_CLASSES = 10
_PIXELS = 3 * 32 * 32
_REFETCH = "delete the folder to re-download, or supply the official files with --data-dir"


@dataclass(frozen=True)
class Cifar10:
    train_images: torch.Tensor  # uint8, (50000, 3, 32, 32), NCHW, official order
    train_labels: torch.Tensor  # int64, (50000,)
    test_images: torch.Tensor   # uint8, (10000, 3, 32, 32)
    test_labels: torch.Tensor   # int64, (10000,)
    classes: tuple              # the 10 label_names of batches.meta
    fingerprint: str            # short hex id of the verified source files


def read_batches(src, md5s, fingerprint):
    """Verify and decode the seven files in the folder src into a Cifar10."""
    for name in SOURCE_FILES:
        if not (src / name).is_file():
            raise DataError(f"{src / name} is missing; {_REFETCH}")
    parts = {}
    for name in SOURCE_FILES:
        path = src / name
        obj = _unpickle(read_verified(path, md5s[name]), path)
        parts[name] = _decode_meta(obj, path) if name == META_FILE else _decode_batch(obj, path)
    train = [parts[name] for name in TRAIN_FILES]
    test_images, test_labels = parts[TEST_FILE]
    return Cifar10(
        train_images=torch.from_numpy(np.concatenate([im for im, _ in train])),
        train_labels=torch.from_numpy(np.concatenate([lb for _, lb in train])),
        test_images=torch.from_numpy(np.ascontiguousarray(test_images)),
        test_labels=torch.from_numpy(test_labels),
        classes=parts[META_FILE],
        fingerprint=fingerprint,
    )


def read_verified(path, md5):
    """The bytes of path, once they match md5 (hex)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({reason(e)})") from None
    if hashlib.md5(raw, usedforsecurity=False).hexdigest() != md5:
        raise DataError(f"{path} fails its MD5 check (corrupt or modified); {_REFETCH}")
    return raw


@functools.cache
def _allowed_globals():
    # The exact function numpy pickles arrays with, whichever module it lives in.
    reconstruct = np.ndarray(0).__reduce__()[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what rebuilding a numpy array needs, so a file cannot run code."""

    def __init__(self, file, source):
        super().__init__(file, encoding="bytes")  # the files were pickled by Python 2
        self._source = source

    def find_class(self, module, name):
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise DataError(f"refusing to unpickle {module}.{name} from {self._source}: "
                            "not a plain CIFAR-10 batch")
        return obj

    def persistent_load(self, pid):
        raise DataError(f"refusing persistent id in {self._source}: not a plain CIFAR-10 batch")


def _unpickle(raw, path):
    try:
        return _BatchUnpickler(io.BytesIO(raw), path).load()
    except DataError:
        raise
    except Exception as e:  # garbage bytes can raise almost anything inside pickle
        raise DataError(
            f"cannot decode {path} ({reason(e)}); delete the folder to re-download"
        ) from None


def _decode_batch(obj, path):
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from one unpickled batch."""
    bad = f"{path} is not a CIFAR-10 batch"
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise DataError(f"{bad}: expected a dict with data and labels")
    data, labels = obj[b"data"], obj[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[0] > 0 and data.shape[1] == _PIXELS):
        shape = getattr(data, "shape", None)
        raise DataError(f"{bad}: data must be uint8 (N, {_PIXELS}), got {shape}")
    try:
        labels = np.asarray(labels)
    except Exception:  # ragged or odd objects
        raise DataError(f"{bad}: labels are not a list of ints") from None
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise DataError(f"{bad}: need {data.shape[0]} integer labels, got {labels.shape}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"{bad}: labels must be in 0..{NUM_CLASSES - 1}")
    images = data.reshape(-1, 3, 32, 32)  # each row is the R plane, then G, then B
    return images, labels.astype(np.int64)


def _decode_meta(obj, path):
    names = obj.get(b"label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"{path} is not CIFAR-10 metadata: need {NUM_CLASSES} label_names")
    try:
        return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError:
        raise DataError(f"{path} has label_names that are not text") from None
