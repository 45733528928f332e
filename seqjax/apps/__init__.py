"""Applications built on seqjax: the char-level language model, the command line, plots,
data sets and synthetic series, host-memory tuning and the benchmark harness.

Nothing in the core imports this package; each module here imports only the core (and its
own optional dependencies: matplotlib for :mod:`~seqjax.apps.plots`).
"""
