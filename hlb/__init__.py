"""hlb-cifar10: train a network on CIFAR-10 to a target accuracy, fast, and measure it.

    import hlb
    record = hlb.train("smoke", runs=2, device="cpu")
    print(record.summary.acc_mean, record.summary.time_mean)
    hlb.save(record, "smoke.safetensors")     # the last run's network, recipe and results
    net = hlb.load("smoke.safetensors")       # ready for inference
"""

# The one place the version lives: pyproject.toml reads it, every record carries it.
__version__ = "0.1.0"

# The imports come after __version__, which hlb.bench.report reads.
from hlb.bench.runs import Record, train  # noqa: E402
from hlb.bench.saved import load, save  # noqa: E402
from hlb.bench.tune_report import tune  # noqa: E402
from hlb.recipes import RECIPES, Recipe  # noqa: E402

__all__ = ["RECIPES", "Recipe", "Record", "__version__", "load", "save", "train", "tune"]
