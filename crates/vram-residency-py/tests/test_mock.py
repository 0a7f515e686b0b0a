"""The package on the mock backend, with NumPy arrays standing in for tensors: the mock reads
each array where it lies at every verification, so a change made through NumPy is a change
"in VRAM". Every digest and signature is checked against the project's Python reference."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import vram_residency as vr

from conftest import TOKEN, WORKER

ALG = "sha256-tree-65536"


def weights() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(7)
    return {
        "model.embed.weight": rng.standard_normal((64, 32), dtype=np.float32),
        "model.layers.0.mlp.weight": rng.standard_normal((32, 48)).astype(np.float16),
        "model.layers.0.bias": np.arange(48, dtype=np.int64),
        "lm_head.weight": rng.integers(0, 255, size=(70_000,), dtype=np.uint8),
    }


def expected_model_digest(reference: ModuleType, tensors: dict[str, np.ndarray[Any, Any]]) -> str:
    dtypes = {np.float32: "F32", np.float16: "F16", np.int64: "I64", np.uint8: "U8"}
    entries = [
        reference.tensor(name, dtypes[a.dtype.type], list(a.shape), a.tobytes(), ALG)
        for name, a in tensors.items()
    ]
    return "vram-model-v1:" + hashlib.sha256(reference.model_encoding(entries)).hexdigest()


def test_seal_gives_each_tensor_and_the_model_the_reference_digests(
    manager: vr.Manager, reference: ModuleType
) -> None:
    w = weights()
    sealed = manager.seal(w, model_id="tiny")
    assert sealed.model_id == "tiny"
    assert len(sealed) == 4
    assert sealed.nbytes == sum(a.nbytes for a in w.values())
    assert list(sealed.tensors) == sorted(w, key=str.encode)
    for name, array in w.items():
        t = sealed.tensors[name]
        assert t.digest == f"{ALG}:{reference.digest(array.tobytes(), ALG)}"
        assert t.digest == vr.digest(array)
        assert t.shape == list(array.shape)
        assert t.nbytes == array.nbytes
    assert sealed.tensors["model.layers.0.mlp.weight"].dtype == "F16"
    assert sealed.digest == expected_model_digest(reference, w)
    manager.verify(sealed)
    manager.verify(sealed, background=True)


def test_a_byte_changed_through_numpy_is_caught_and_the_manager_stops(
    manager: vr.Manager,
) -> None:
    w = weights()
    sealed = manager.seal(w, model_id="tiny")
    manager.verify(sealed)
    w["model.layers.0.bias"][3] += 1
    with pytest.raises(vr.IntegrityError) as caught:
        manager.verify(sealed)
    e = caught.value
    assert e.kind == "IntegrityViolation"
    assert e.shard_id == "tiny:model.layers.0.bias"
    assert e.expected != e.actual and len(e.actual) == 64
    assert manager.is_stopped
    assert manager.stop_reason is not None and "integrity" in manager.stop_reason
    with pytest.raises(vr.VramResidencyError) as stopped:
        manager.verify(sealed)
    assert stopped.value.kind == "Stopped"


def test_the_execution_window_checks_before_and_after_the_block(manager: vr.Manager) -> None:
    w = weights()
    sealed = manager.seal(w, model_id="tiny")
    ran = []
    with manager.execute(sealed):
        ran.append("request 1")
    with manager.execute(sealed, mode="before"):
        ran.append("request 2")
    assert ran == ["request 1", "request 2"]

    with pytest.raises(vr.IntegrityError) as caught:
        with manager.execute(sealed):
            ran.append("request 3")
            w["lm_head.weight"][-1] ^= 0x10  # a write into the weights during the forward pass
    assert caught.value.kind == "ModifiedDuringExecution"
    assert caught.value.shard_id == "tiny:lm_head.weight"
    assert ran[-1] == "request 3"


def test_a_change_before_the_request_keeps_the_block_from_running(manager: vr.Manager) -> None:
    w = weights()
    sealed = manager.seal(w, model_id="tiny")
    w["model.embed.weight"][0, 0] = 42.0
    ran = []
    with pytest.raises(vr.IntegrityError) as caught:
        with manager.execute(sealed):
            ran.append("never")
    assert caught.value.kind == "IntegrityViolation"
    assert ran == []


def test_an_exception_in_the_block_still_ends_the_window(manager: vr.Manager) -> None:
    sealed = manager.seal(weights(), model_id="tiny")
    with pytest.raises(KeyError):
        with manager.execute(sealed):
            raise KeyError("engine failure")
    manager.verify(sealed)
    window = manager.execute(sealed)
    with window:
        with pytest.raises(vr.BadInput):
            window.__enter__()


def test_expected_model_digest(manager: vr.Manager, reference: ModuleType) -> None:
    w = weights()
    right = expected_model_digest(reference, w)
    wrong = "vram-model-v1:" + "0" * 64
    with pytest.raises(vr.IntegrityError) as caught:
        manager.seal(w, model_id="tiny", expect=wrong)
    assert caught.value.kind == "UnexpectedDigest"
    assert caught.value.expected == "0" * 64
    # Nothing stayed sealed: the same id seals again, against the right digest.
    sealed = manager.seal(w, model_id="tiny", expect=right)
    assert sealed.digest == right
    with pytest.raises(vr.BadInput):
        manager.seal(w, model_id="other", expect="sha256:nothex")


def test_bad_input_is_refused_and_changes_nothing(manager: vr.Manager) -> None:
    good = np.ones((4, 4), dtype=np.float32)
    cases: list[tuple[Any, str]] = [
        ({"w": good.T}, "not contiguous"),
        ({"w": np.zeros(0, dtype=np.float32)}, "no tensor with bytes"),
        ({"w": np.ones(3, dtype=np.complex64)}, "model files do not name"),
        ({"w": "not a tensor"}, "a str"),
        ({"w": good, 3: good}, ""),
        ([good], "mapping"),
        ({}, "no tensors"),
    ]
    for tensors, message in cases:
        with pytest.raises((vr.BadInput, TypeError)) as caught:
            manager.seal(tensors, model_id="m")
        assert message in str(caught.value)
    with pytest.raises(vr.BadInput) as bad_id:
        manager.seal({"w": good}, model_id="bad id\n")
    assert bad_id.value.kind == "InvalidInput"
    with pytest.raises(vr.BadInput):
        manager.execute(manager.seal({"w": good}, model_id="m"), mode="after")  # type: ignore[arg-type]
    assert not manager.is_stopped
    manager.seal({"w": good.copy()}, model_id="m2")


def test_empty_tensors_are_left_out_as_the_model_digest_leaves_them_out(
    manager: vr.Manager,
) -> None:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    alone = manager.seal({"w": w}, model_id="alone")
    with_empty = manager.seal(
        {"w": w.copy(), "bias": np.zeros((0, 4), dtype=np.float32)}, model_id="with-empty"
    )
    assert with_empty.digest == alone.digest
    assert list(with_empty.tensors) == ["w"]


def test_a_refused_seal_keeps_no_reference_to_the_tensors(manager: vr.Manager) -> None:
    import sys

    a, b = np.ones(1024, dtype=np.float32), np.zeros(64, dtype=np.int64)
    before = sys.getrefcount(a), sys.getrefcount(b)
    for _ in range(3):
        # Refused by the manager after the tensors were handed over (a bad model id).
        with pytest.raises(vr.BadInput):
            manager.seal({"a": a, "b": b}, model_id="bad id\n")
    assert (sys.getrefcount(a), sys.getrefcount(b)) == before
    sealed = manager.seal({"a": a, "b": b}, model_id="m")
    assert sys.getrefcount(a) > before[0]  # a sealed model keeps its tensors
    manager.release(sealed)
    del sealed
    assert (sys.getrefcount(a), sys.getrefcount(b)) == before


def test_release_is_idempotent_and_frees_the_id(manager: vr.Manager) -> None:
    w = weights()
    sealed = manager.seal(w, model_id="tiny")
    with pytest.raises(vr.BadInput):
        manager.seal(w, model_id="tiny")
    manager.release(sealed)
    manager.release(sealed)
    assert sealed.released
    with pytest.raises(vr.BadInput) as caught:
        manager.verify(sealed)
    assert "released" in str(caught.value)
    again = manager.seal(w, model_id="tiny")
    manager.verify(again)


def test_attestations_verify_under_the_key_derived_from_the_token(
    manager: vr.Manager, reference: ModuleType
) -> None:
    sealed = manager.seal(weights(), model_id="tiny")
    nonce = os.urandom(16)
    statements = manager.attest(sealed, nonce)
    assert [a["shard_id"] for a in statements] == [f"tiny:{n}" for n in sealed.tensors]
    key = reference.hkdf(TOKEN, reference.HKDF_SALT, reference.HKDF_INFO_PREFIX + WORKER.encode())
    for a in statements:
        assert a["simulated"] is True and a["backend"] == "mock"
        assert a["nonce"] == nonce.hex()
        body = reference.STATEMENT_DOMAIN + reference.attestation_statement(a)
        assert a["signature"] == hmac.new(key, body, hashlib.sha256).hexdigest()
    with pytest.raises(vr.BadInput):
        manager.attest(sealed, b"n" * 257)


def test_token_file_and_audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VRAM_WORKER_TOKEN", raising=False)
    with pytest.raises(vr.BadInput) as none:
        vr.Manager(WORKER, backend="mock")
    assert "VRAM_WORKER_TOKEN" in str(none.value)

    token = tmp_path / "token"
    token.write_bytes(TOKEN + b"\n")
    token.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
    log = tmp_path / "audit.log"
    with pytest.warns(UserWarning, match="chmod 600"):
        m = vr.Manager(WORKER, backend="mock", token_file=token, audit_log=log)
    sealed = m.seal(weights(), model_id="tiny")
    m.verify(sealed)
    m.release(sealed)
    del m
    records = log.read_text().splitlines()
    assert any('"VramSealed"' in r for r in records)
    assert any('"SealVerified"' in r for r in records)

    with pytest.raises(vr.BadInput):
        vr.Manager(WORKER, backend="mock", token_file=tmp_path)
    with pytest.raises(vr.BadInput):
        vr.Manager(WORKER, backend="gpu-or-ram")  # type: ignore[arg-type]
    # Refused arguments leave nothing behind: no audit log is created for them.
    token.chmod(stat.S_IRUSR | stat.S_IWUSR)
    other = tmp_path / "other.log"
    for bad in (dict(backend="gpu-or-ram"), dict(audit_failure="ignore"), dict(algorithm="md5")):
        with pytest.raises(vr.BadInput):
            vr.Manager(WORKER, token_file=token, audit_log=other, **bad)  # type: ignore[arg-type]
        assert not other.exists(), bad


def test_blake3_models_match_the_blake3_package(
    token_env: bytes, reference: ModuleType
) -> None:
    import blake3

    manager = vr.Manager(WORKER, backend="mock", algorithm="blake3")
    w = weights()
    sealed = manager.seal(w, model_id="tiny")
    for name, array in w.items():
        assert sealed.tensors[name].digest == "blake3:" + blake3.blake3(array.tobytes()).hexdigest()
    entries = [
        reference.tensor(name, sealed.tensors[name].dtype, list(a.shape), a.tobytes(), "blake3")
        for name, a in w.items()
    ]
    assert sealed.digest == "vram-model-v1:" + hashlib.sha256(reference.model_encoding(entries)).hexdigest()
    w["lm_head.weight"][0] ^= 1
    with pytest.raises(vr.IntegrityError):
        manager.verify(sealed)
    with pytest.raises(vr.BadInput):
        vr.Manager(WORKER, backend="mock", algorithm="md5")


def test_digest_matches_the_reference(reference: ModuleType) -> None:
    data = bytes(range(256)) * 1000
    assert vr.digest(data, algorithm="sha256") == hashlib.sha256(data).hexdigest()
    assert vr.digest(data, algorithm="blake3") == "blake3:" + reference.digest(data, "blake3")
    for alg in ("sha256-tree-4096", "sha256-tree-65536"):
        assert vr.digest(data, algorithm=alg) == f"{alg}:{reference.digest(data, alg)}"
    with pytest.raises(vr.BadInput):
        vr.digest(data, algorithm="md5")
    with pytest.raises(vr.BadInput):
        vr.digest(12345)


def test_an_update_is_sealed_again_only_as_the_sender_sent_it(manager: vr.Manager) -> None:
    w = weights()
    sealed = manager.seal(w, model_id="tiny")
    manager.begin_update(sealed)
    with pytest.raises(vr.BadInput) as updating:
        manager.verify(sealed)
    assert updating.value.kind == "ModelUpdating"
    # A refit written in place; the sender's digests travel with it.
    w["model.layers.0.bias"][:] = np.arange(48, 96, dtype=np.int64)
    sent = vr.digest_tensors(w)
    new = manager.update(sealed, expect=sent)
    assert new.digest == sent[0] != sealed.digest
    manager.verify(new)
    with pytest.raises(vr.IntegrityError) as old:
        manager.verify(sealed)
    assert old.value.kind == "NotSealed"
    # Sleep and wake: new storage from an offloaded copy with one flipped byte, checked
    # against the digest kept from before sleep.
    kept = new.digest
    manager.begin_update(new)
    woken = {name: array.copy() for name, array in w.items()}
    woken["lm_head.weight"][5] ^= 1
    with pytest.raises(vr.IntegrityError) as refused:
        manager.update(new, woken, expect=kept)
    assert refused.value.kind == "UpdateRefused"
    assert refused.value.tensor == "lm_head.weight"
    assert not manager.is_stopped
    with pytest.raises(vr.BadInput):
        manager.verify(new)  # still refused
    woken["lm_head.weight"][5] ^= 1
    again = manager.update(new, woken, expect=kept)
    assert again.digest == kept
    manager.verify(again)
    with pytest.raises(vr.BadInput):
        manager.update(again)  # no expectation, no trust
    with pytest.raises(vr.BadInput):
        manager.update(again, expect=kept)  # not announced


def test_digest_tensors_gives_what_a_seal_and_the_reference_give(
    manager: vr.Manager, reference: ModuleType
) -> None:
    w = weights()
    w["empty"] = np.zeros((0, 4), dtype=np.float32)
    model, each = vr.digest_tensors(w, algorithm=ALG)
    del w["empty"]
    assert model == expected_model_digest(reference, w)
    assert sorted(each) == sorted(w)
    for name, array in w.items():
        assert each[name] == vr.digest(array, algorithm=ALG)
    # The same tensors sealed: the same model digest, with no manager needed to get it.
    assert manager.seal(w, model_id="tiny").digest == model
    for alg in ("blake3", "sha256"):
        other, per = vr.digest_tensors(w, algorithm=alg)
        assert other != model
        assert per["lm_head.weight"] == vr.digest(w["lm_head.weight"], algorithm=alg)
    with pytest.raises(vr.BadInput):
        vr.digest_tensors({"e": np.zeros(0, dtype=np.uint8)})
    with pytest.raises(vr.BadInput):
        vr.digest_tensors([1, 2, 3])


class CudaArray:
    """An object that speaks `__cuda_array_interface__` (as CuPy and Numba arrays do)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        typestr: str,
        strides: tuple[int, ...] | None,
        stream: int | None = None,
    ):
        self.__cuda_array_interface__ = {
            "version": 3,
            "shape": shape,
            "typestr": typestr,
            "data": (0x7F0000000000, False),
            "strides": strides,
            "stream": stream,
        }


class DlpackOnly:
    """A GPU array that speaks only DLPack (as a JAX array does)."""

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)  # kDLCUDA, device 0

    def __dlpack__(self, stream: int | None = None) -> object:
        raise AssertionError("never read without PyTorch or CuPy")


def test_dlpack_gpu_arrays_need_a_reader_and_numpy_stays_host(manager: vr.Manager) -> None:
    import importlib.util

    if any(importlib.util.find_spec(m) for m in ("cupy", "torch")):
        pytest.skip("PyTorch or CuPy is installed: the DLPack array would be read")
    with pytest.raises(vr.BadInput) as caught:
        manager.seal({"w": DlpackOnly()}, model_id="m")
    assert "speaks only DLPack" in str(caught.value)
    # NumPy also speaks DLPack, on the CPU: it is taken as a host buffer.
    sealed = manager.seal({"w": np.ones(8, dtype=np.float32)}, model_id="m")
    assert sealed.tensors["w"].dtype == "F32"


def test_cuda_array_interface_is_read_and_checked(manager: vr.Manager) -> None:
    cases = [
        (CudaArray((2, 3), "<f4", (4, 8)), "not contiguous"),  # a transposed view
        (CudaArray((2, 3), "<f4", (16, 4)), "not contiguous"),  # a gap between rows
        (CudaArray((2, 3), ">f4", None), "model files do not name"),  # big-endian
        (CudaArray((2, 3), "<c8", None), "model files do not name"),
        (CudaArray((0, 3), "<f4", None), "no tensor with bytes"),
        # Contiguous (a size-1 dimension's stride is free), then refused by the mock backend.
        (CudaArray((1, 3), "<f2", (999, 2)), "this manager is the mock backend"),
        (CudaArray((2, 3), "|u1", None), "this manager is the mock backend"),
    ]
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("cupy", "torch")):
        # The producer's stream must be waited for, and nothing here can wrap its handle.
        cases.append((CudaArray((2, 3), "<f4", None, stream=7), "neither CuPy nor PyTorch"))
    for array, message in cases:
        with pytest.raises(vr.BadInput) as caught:
            manager.seal({"w": array}, model_id="m")
        assert message in str(caught.value), (array.__cuda_array_interface__, caught.value)
    assert not manager.is_stopped


@pytest.mark.parametrize("libraries", [("torch",), ("cupy",), ("torch", "cupy")])
def test_a_stream_handle_nothing_vouches_for_is_refused_before_it_is_used(
    manager: vr.Manager, monkeypatch: pytest.MonkeyPatch, libraries: tuple[str, ...]
) -> None:
    # A garbage handle in __cuda_array_interface__ crashed the process when synchronised; 0 is
    # disallowed by the interface and is what PyTorch and CuPy report for their default stream.
    # PyTorch and CuPy stand in here as fakes with a GPU (their current stream reported as 0,
    # as the real ones do), so the handles are judged as on a GPU machine.
    import sys
    import types

    waited: list[int] = []

    class Stream:
        def __init__(self, handle: int) -> None:
            self.cuda_stream = self.ptr = handle

        def synchronize(self) -> None:
            waited.append(self.cuda_stream)

    torch_cuda = types.SimpleNamespace(
        is_available=lambda: True,
        current_stream=lambda device=None: Stream(0),
        default_stream=lambda device=None: Stream(0),
        ExternalStream=Stream,
    )
    cupy_cuda = types.SimpleNamespace(
        get_current_stream=lambda: Stream(0),
        Stream=types.SimpleNamespace(null=Stream(1), ptds=Stream(2)),
        ExternalStream=Stream,
    )
    fakes = {"torch": torch_cuda, "cupy": cupy_cuda}
    for name, cuda in fakes.items():
        # A library left out cannot be imported (None in sys.modules), whatever is installed.
        fake = types.SimpleNamespace(cuda=cuda) if name in libraries else None
        monkeypatch.setitem(sys.modules, name, fake)
    for garbage in (0xDEADBEEF, 0):
        with pytest.raises(vr.BadInput, match="nothing vouches"):
            manager.seal({"w": CudaArray((2, 3), "<f4", None, stream=garbage)}, model_id="m")
    # The legacy default stream (1) is vouched for: taken, then refused as device memory on
    # the mock backend, before anything waits on it.
    with pytest.raises(vr.BadInput, match="mock backend"):
        manager.seal({"w": CudaArray((2, 3), "<f4", None, stream=1)}, model_id="m")
    assert waited == []
    assert not manager.is_stopped


def test_the_scrubber_reverifies_everything_and_finds_a_change(manager: vr.Manager) -> None:
    import time

    w = weights()
    sealed = manager.seal(w, model_id="tiny")
    with manager.start_scrubber(interval=0.0) as scrubber:
        deadline = time.monotonic() + 20
        while scrubber.verified < 2 * len(sealed) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scrubber.verified >= 2 * len(sealed)
        assert scrubber.running
        metrics = manager.metrics_text()
        assert 'vram_oldest_verification_age_seconds{gpu_device="0"}' in metrics
    assert not scrubber.running
    scrubber.stop()  # idempotent

    # Dropped while running (no stop): it stops without holding up the interpreter.
    dropped = manager.start_scrubber()
    time.sleep(0.05)
    del dropped
    import gc

    gc.collect()

    scrubber = manager.start_scrubber(interval=0.0, share=0.125)
    w["model.embed.weight"][5, 5] += 1.0
    deadline = time.monotonic() + 20
    while scrubber.running and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(vr.IntegrityError) as caught:
        scrubber.stop()
    assert caught.value.shard_id == "tiny:model.embed.weight"
    assert manager.is_stopped
    with pytest.raises(vr.BadInput):
        manager.start_scrubber(share=1.5)
    with pytest.raises(vr.BadInput):
        manager.start_scrubber(interval=-1.0)


def test_the_default_backend_is_cuda_and_never_falls_back(token_env: bytes) -> None:
    from conftest import gpu_tests_enabled

    if gpu_tests_enabled():
        pytest.skip("a GPU is present: the CUDA manager would be built")
    # No GPU (or no driver): refused, never the mock in disguise.
    with pytest.raises(vr.VramResidencyError) as caught:
        vr.Manager(WORKER)
    assert caught.value.kind in ("NoGpu", "DriverTooOld")


def test_a_resized_array_or_the_base_of_a_view_is_reported_never_read(token_env: bytes) -> None:
    # NumPy reallocates an array on resize(refcheck=False) whatever is exported, and leaves its
    # views pointing at freed memory; the mock read it (a SIGSEGV, or garbage).
    def mock() -> vr.Manager:
        return vr.Manager(WORKER, backend="mock")

    a = np.ones(1000, dtype=np.float32)
    manager = mock()
    sealed = manager.seal({"w": a}, model_id="m")
    a.resize(10**7, refcheck=False)
    with pytest.raises(vr.VramResidencyError, match="resized after it was sealed"):
        manager.verify(sealed)

    base = np.ones((100, 100), dtype=np.float32)
    manager = mock()
    view = manager.seal({"v": base[10:20]}, model_id="v")
    # A view of a temporary (its base is kept alive, and unchanged) is read as ever.
    kept = manager.seal({"k": np.arange(12, dtype=np.float32).reshape(3, 4)}, model_id="k")
    manager.verify(kept)
    manager.verify(view)
    base.resize(10**7, refcheck=False)
    with pytest.raises(vr.VramResidencyError, match="resized after it was sealed"):
        manager.verify(view)
