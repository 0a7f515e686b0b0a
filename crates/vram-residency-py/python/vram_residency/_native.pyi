"""The compiled part of `vram_residency` (its names are re-exported there): seal the tensors a
model holds on the GPU where they lie, verify them before each request, and check them again
after a forward pass (the Rust library `vram-residency`, in Python)."""

import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, final

__version__: str
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

class VramResidencyError(Exception):
    """Every error of the library. `kind` names the Rust error variant; the other attributes
    are its fields (`shard_id`, `expected`, `actual`, `device`, `needed`, `available`,
    `reason`, ...). No error carries key material or a device address."""

    kind: str

class IntegrityError(VramResidencyError):
    """The bytes are not the bytes that were sealed, or cannot be shown to be: do not serve.
    `kind` is one of `IntegrityViolation`, `ModifiedDuringExecution`, `UnexpectedDigest`,
    `SealVerificationFailed`, `SealExpired`, `NotSealed`, `UploadMismatch`, `UpdateRefused`.
    After an integrity failure the manager stops (`Manager.is_stopped`), except after
    `UpdateRefused` (the model stays refused, nothing else) and `NotSealed`."""

    shard_id: str
    expected: str
    actual: str
    model_id: str
    found: str
    tensor: str | None

class PolicyViolation(VramResidencyError):
    """Memory or a device that breaks the VRAM-only policy (managed or host memory, an
    integrated GPU)."""

    device: int
    reason: str

class InsufficientVram(VramResidencyError):
    """Not enough memory: device memory (`needed`, `available` and `device` set), or host
    memory (`needed` set)."""

    needed: int
    available: int
    device: int

class BadInput(VramResidencyError):
    """An argument refused before anything was done: nothing changed, nothing was audited.
    Kind `ModelUpdating` (with `model_id`): the model is under an announced update, and is
    served again once `update` accepts one."""

    reason: str
    model_id: str

@final
class SealedTensor:
    """One tensor of a sealed model, with its digest as `vramctl digest --tensors` prints it."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str:
        """As model files name it: `BF16`, `F32`, `I64`, ..."""
    @property
    def shape(self) -> list[int]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def digest(self) -> str:
        """`ALG:HEX` (bare hex for flat `sha256`)."""

@final
class SealedModel:
    """A model sealed in place. It keeps its tensors referenced until released: do not free
    their storage (`untyped_storage().resize_(0)`, an allocator's sleep mode) while it lives;
    a verification would then fail."""

    @property
    def model_id(self) -> str: ...
    @property
    def digest(self) -> str:
        """The model digest, `vram-model-v1:HEX`, as `vramctl digest --tensors` prints it for
        the same weights saved with `safetensors`."""
    @property
    def device(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def tensors(self) -> dict[str, SealedTensor]: ...
    @property
    def released(self) -> bool: ...
    def __len__(self) -> int: ...

@final
class Execution:
    """The window around a forward pass (`Manager.execute`), ordered on the GPU with the work
    on its stream (PyTorch's current stream of the model's device at `__enter__`, or the stream
    given); the host waits only for the verdicts. What each mode proves:

    - `"before"`: every weight hashed, after the work queued so far on the stream, to its sealed
      digest before the block runs; a change found keeps the block from running
      (`IntegrityError`, `kind` = `IntegrityViolation`).
    - `"before_and_after"` (default): as `"before"`, and the weights hashed again after the
      block's work on the stream (an event recorded there, never a device-wide or host
      synchronisation of engine streams); `__exit__` waits for that verdict and raises
      `IntegrityError` (`kind` = `ModifiedDuringExecution`) when a weight changed during the
      block: its result must not be served.
    - `"pipelined"`: the first check is queued on the GPU and the stream waits for it there,
      so the block starts without a host round trip; `__exit__` reads both verdicts. The block
      may have computed on weights the first check then finds changed: its result is withheld
      the same way (an `IntegrityError` from `__exit__`).

    One per request. On the mock backend (no streams) the checks run on the host, in order."""

    @property
    def mode(self) -> str: ...
    def __enter__(self) -> Execution: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> bool: ...

@final
class Scrubber:
    """One of the library's verifiers (`Manager.start_scrubber`). `mode="background"`: every
    sealed tensor re-verified, the least recently proven first, on a Rust thread at a bounded
    GPU share. `mode="step"`: `step()`, called once per engine step (the `vram_residency.torch`
    hooks call it), queues a slice of a whole-GPU digest after the step's work, sized to a
    share of the step's time. `vram_oldest_verification_age_seconds` in
    `Manager.metrics_text()` shows how fresh the oldest proof is. Running scrubbers are stopped
    at interpreter exit."""

    @property
    def mode(self) -> str:
        """`"background"` or `"step"`."""
    @property
    def verified(self) -> int:
        """Tensor verifications passed so far (kept after `stop()`)."""
    @property
    def bytes_verified(self) -> int:
        """Bytes the step scrubber's passed verifications hashed (0 for a background one)."""
    @property
    def running(self) -> bool:
        """False once stopped or after the failure that ended it."""
    def verify_all_now(self) -> None:
        """Makes every tensor due at once (background scrubber)."""
    def step(self, stream: Any = None) -> None:
        """One engine step (step scrubber): checks the slices finished since the last step
        without waiting, then queues the next after the work queued so far on `stream`
        (default PyTorch's current stream). Raises `IntegrityError` for a failed
        verification (the manager stops), `BadInput` on a background or stopped scrubber."""
    def stop(self) -> None:
        """Stops it (a step scrubber waits for its slices in flight and checks them); raises
        the failure it found (an `IntegrityError` after which the manager is stopped), if any.
        Idempotent."""
    def __enter__(self) -> Scrubber: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> bool: ...

@final
class Manager:
    """One worker's manager of sealed models.

    The seal key and the audit log's signing key derive from the worker token (`token_file`,
    else `$VRAM_WORKER_TOKEN`) and `worker_id`, as `vramctl` derives them. `backend="mock"`
    keeps "device" bytes in host memory and takes NumPy arrays: for tests only. A CUDA manager
    checks the VRAM-only policy when it is built. `algorithm` is the digest every seal uses:
    `sha256-tree-65536` (default), `sha256-tree-<leaf bytes>`, `sha256` or `blake3`."""

    def __new__(
        cls,
        worker_id: str,
        *,
        token_file: str | os.PathLike[str] | None = None,
        audit_log: str | os.PathLike[str] | None = None,
        audit_failure: Literal["fail_closed", "continue"] = "fail_closed",
        algorithm: str = "sha256-tree-65536",
        backend: Literal["cuda", "mock"] = "cuda",
        mock_capacity: int = 1 << 30,
    ) -> Manager: ...
    @property
    def backend(self) -> str: ...
    @property
    def is_stopped(self) -> bool: ...
    @property
    def stop_reason(self) -> str | None: ...
    def metrics_text(self) -> str:
        """The manager's metrics in the Prometheus text format (OpenMetrics 1.0)."""
    def seal(
        self,
        tensors: Mapping[str, Any] | Any,
        *,
        model_id: str,
        expect: str | None = None,
    ) -> SealedModel:
        """Seals a `torch.nn.Module` (its `state_dict()`) or a mapping of names to tensors
        (`torch.Tensor`, anything with `__cuda_array_interface__`, a GPU array that speaks
        only DLPack such as a JAX array, read through PyTorch or CuPy; NumPy arrays on the mock)
        where they lie, after the work queued on their producer's stream (PyTorch's current
        stream, or the stream an array interface names) is finished. With `expect` (the
        `vram-model-v1:HEX` of `vramctl digest --tensors`), a model whose digest differs is
        refused and nothing stays sealed."""
    def verify(self, sealed: SealedModel, *, background: bool = False) -> None:
        """Verifies every tensor against its seal on the GPU; `background=True` uses a bounded
        share of the GPU."""
    def execute(
        self,
        sealed: SealedModel,
        *,
        mode: Literal["before", "before_and_after", "pipelined"] = "before_and_after",
        stream: Any = None,
    ) -> Execution:
        """The window around a forward pass (see `Execution`), ordered on `stream` (a
        `torch.cuda.Stream` or CuPy stream object, never a raw handle; default PyTorch's
        current stream of the model's device at `__enter__`)."""
    def start_scrubber(
        self,
        *,
        mode: Literal["background", "step"] = "background",
        interval: float = 10.0,
        share: float | None = None,
        budget: float = 0.01,
        device: int = 0,
        summary_interval: float = 60.0,
    ) -> Scrubber:
        """`mode="background"`: re-verifies every tensor this manager sealed on a Rust thread,
        each once it was last proven `interval` seconds ago (10 by default; 0: continuously,
        which costs a host-bound engine beside it about 12 %), at `share` of the SMs (default:
        the background share, 1/16). `mode="step"`: a scrubber driven by
        `Scrubber.step()` whose calls (their host time) and GPU work together take about `budget`
        of the engine's time: a call works only once the steps since the last working call
        have paid for it, so most calls of a host-bound engine return at once; over the
        tensors on `device`. Passes are written to the audit log as one summary record per
        `summary_interval` seconds; each failure is a record of its own."""
    def attest(self, sealed: SealedModel, nonce: bytes) -> list[dict[str, Any]]:
        """A signed residency statement per tensor, bound to `nonce`."""
    def release(self, sealed: SealedModel) -> None:
        """Releases the model's seals (the tensors stay the engine's). Idempotent. Another
        manager's model is refused with `BadInput` (as `verify`, `execute` and `attest` refuse
        it)."""
    def begin_update(self, sealed: SealedModel) -> None:
        """Announces an update of `sealed`: until `update` accepts one, no check, window or
        scrubber vouches for it (`BadInput`, kind `ModelUpdating`; nothing recorded as failed,
        nothing stopped), so the engine may rewrite its tensors in place or free them."""
    def update(
        self,
        sealed: SealedModel,
        tensors: Mapping[str, Any] | Any | None = None,
        *,
        expect: str | tuple[str, dict[str, str]] | None = None,
        trust_new_bytes: bool = False,
    ) -> SealedModel:
        """Seals an announced update: `tensors` (the new storage; `None`: the tensors sealed
        before, rewritten in place) hashed where they lie, sealed again when they hash to
        `expect` (the sender's `vram-model-v1:HEX`, or `digest_tensors`'s pair, which names the
        first tensor that differs) or with `trust_new_bytes=True` (audited as trusted). A
        mismatch raises `IntegrityError` (kind `UpdateRefused`, `tensor` naming it) and leaves
        the model refused until a good update or `release`; nothing stops. Returns the new
        sealed model; the old one is vouched for no more."""

def digest(
    data: bytes | bytearray | memoryview | Any,
    *,
    algorithm: str = "sha256-tree-65536",
) -> str:
    """The digest of a buffer's bytes (bytes, a NumPy array, a PyTorch tensor on any device, a
    CUDA array) as `ALG:HEX`, bare hex for flat `sha256`: the same string as the Rust side and
    `vramctl digest --tensors` give for the same bytes. A GPU tensor is hashed where it lies
    (no host copy), after the work queued on its stream; host buffers on the host."""

def digest_tensors(
    tensors: Mapping[str, Any] | Any,
    *,
    algorithm: str = "sha256-tree-65536",
) -> tuple[str, dict[str, str]]:
    """Every tensor's digest and the model digest of a `torch.nn.Module` or a mapping of names
    to tensors, with no manager: `(model_digest, {name: digest})`, as `vramctl digest
    --tensors` prints them for the same tensors saved as a safetensors file. A device's GPU
    tensors are hashed where they lie, in batches queued on the GPU while the rest are taken,
    after the work queued on their stream. Empty tensors are left out, as the model digest leaves them out."""
