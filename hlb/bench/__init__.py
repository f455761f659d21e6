"""The bench: the tooling around the method (hlb/*.py) that measures it.

The command line, the runner (one process or torchrun), records, reports, statistics,
comparisons, sweeps, plots and saved models. The method never imports from here
(tests/test_layout.py checks it).
"""
