"""Seal the tensors a model holds on the GPU where they lie, verify them before each request,
and check them again after a forward pass (the Rust library `vram-residency`, in Python).

`vram_residency.torch` puts the checks on any `torch.nn.Module` as forward hooks;
`vram_residency.distributed` checks weights that move between ranks over `torch.distributed`
(verified on arrival, replicas compared)."""

from ._native import (
    BadInput,
    Execution,
    InsufficientVram,
    IntegrityError,
    Manager,
    PolicyViolation,
    Scrubber,
    SealedModel,
    SealedTensor,
    VramResidencyError,
    __version__,
    digest,
    digest_tensors,
)

__all__ = [
    "BadInput",
    "Execution",
    "InsufficientVram",
    "IntegrityError",
    "Manager",
    "PolicyViolation",
    "Scrubber",
    "SealedModel",
    "SealedTensor",
    "VramResidencyError",
    "__version__",
    "digest",
    "digest_tensors",
]
