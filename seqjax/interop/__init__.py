"""Adapters to other libraries (PyTorch weights; Flax modules).

Each module here is optional: the core of seqjax never imports it, and importing one needs
only what that module says it needs (:mod:`seqjax.interop.torch` does not need PyTorch).
"""
