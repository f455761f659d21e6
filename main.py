"""Train a network on CIFAR-10 to 94% and report accuracy and time: `python main.py --help`."""

import sys

from hlb.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
