"""Hand-written kernels (Pallas) for parts of seqjax that XLA does not fuse well on its own."""
