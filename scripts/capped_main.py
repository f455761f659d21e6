"""Run main.py as if the GPU had only GB gigabytes: `python scripts/capped_main.py 4 --runs 3`.

Caps this process's CUDA allocator with torch.cuda.set_per_process_memory_fraction, so a
recipe that needs more fails with the out-of-memory message a small GPU would give.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlb.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    gigabytes = float(sys.argv[1])
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gigabytes * 2**30 / total))
        print(f"GPU memory capped at {gigabytes:g} GiB of {total / 2**30:.0f} GiB")
    sys.exit(main(sys.argv[2:]))
