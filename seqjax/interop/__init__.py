"""Adapters to other libraries (PyTorch weights; Flax modules).

Each module here is optional: the core of seqjax never imports it, and importing one needs
only what that module says it needs (:mod:`seqjax.interop.torch` does not need PyTorch).

* :mod:`seqjax.interop.torch`: ``state_dict`` and ``h_0``/``c_0`` import and export.
* :mod:`seqjax.interop.flax_nnx`: ``Recurrent`` / ``RecurrentCell``, seqjax cells and layers
  as ``nnx.Module``; exact conversion from and to ``nnx.LSTMCell``, ``OptimizedLSTMCell``,
  ``GRUCell``, ``SimpleCell``.
* :mod:`seqjax.interop.flax_linen`: the same for linen (``self.param``; ``nn.remat``,
  ``nn.scan``, ``nn.RNN``); exact conversion from and to linen's cells.
"""
