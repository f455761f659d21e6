"""hlb-cifar10: train a network on CIFAR-10 to a target accuracy, fast, and measure it.

    import hlb
    record = hlb.train("smoke", runs=2, device="cpu")
    print(record.summary.acc_mean, record.summary.time_mean)
"""

from hlb.recipes import RECIPES, Recipe
from hlb.runs import Record, train

__all__ = ["RECIPES", "Recipe", "Record", "train"]
