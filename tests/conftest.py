"""Shared fixtures: the real CIFAR-10 (from ../shared, when present) and small synthetic data."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """A data dir holding the byte-exact official files, materialized once per test session."""
    script = SHARED_CIFAR / "materialize.py"
    if not script.is_file():
        pytest.skip(f"real CIFAR-10 not available ({SHARED_CIFAR} is absent)")
    root = tmp_path_factory.mktemp("cifar")
    subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True)
    return root


@pytest.fixture(scope="session")
def cifar(cifar_dir):
    from hlb.data import load_cifar10
    return load_cifar10(cifar_dir, download=False)


def synthetic_cifar(n_train=512, n_test=256, seed=0):
    """A learnable stand-in for CIFAR-10: each class is a noisy version of its own pattern."""
    from hlb.data import Cifar10
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, 3, 32, 32, generator=g) * 255

    def split(n):
        labels = torch.randint(0, 10, (n,), generator=g)
        noise = torch.randn(n, 3, 32, 32, generator=g) * 40
        images = (prototypes[labels] + noise).clamp(0, 255).to(torch.uint8)
        return images, labels

    train_images, train_labels = split(n_train)
    test_images, test_labels = split(n_test)
    classes = tuple(f"class{i}" for i in range(10))
    return Cifar10(train_images, train_labels, test_images, test_labels, classes, "synthetic")


@pytest.fixture(autouse=True)
def runs_dir(tmp_path_factory, monkeypatch):
    """Records that commands keep go to a temporary runs folder, not the repository's."""
    path = tmp_path_factory.mktemp("runs")
    monkeypatch.setenv("HLB_RUNS_DIR", str(path))
    return path


def ctrl_c_as_at_a_terminal():
    """For a child that a test interrupts with SIGINT (Popen's preexec_fn): SIGINT's default
    action, as under a terminal. A shell starts background jobs with SIGINT ignored, and a
    Python started so keeps ignoring it, so a suite run in the background would not see Ctrl-C
    reach main.py."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
