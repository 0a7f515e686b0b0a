"""The engine-facing API on the mock backend (NumPy arrays standing in for tensors, read where
they lie at every digest): windows driven from `__enter__`/`__exit__` without a thread, the
step scrubber, the `vram_residency.torch` hooks on any module that offers PyTorch's hook
methods, the audit summaries of scrubbers, and scrubbers stopped at interpreter exit."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import vram_residency as vr
from vram_residency.torch import guard

from conftest import WORKER


def weights() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(11)
    return {
        f"layers.{i}.weight": rng.standard_normal((64, 64), dtype=np.float32) for i in range(6)
    }


class FakeModule:
    """What `guard` needs of a `torch.nn.Module`: its two hook registrations, run around
    `forward` as PyTorch runs them (the hook after also when `forward` raises)."""

    def __init__(self, forward: Callable[[], Any]) -> None:
        self._forward = forward
        self._pre: dict[int, Callable[..., Any]] = {}
        self._post: dict[int, Callable[..., Any]] = {}

    def register_forward_pre_hook(self, hook: Callable[..., Any]) -> Any:
        return self._register(self._pre, hook)

    def register_forward_hook(self, hook: Callable[..., Any], *, always_call: bool = False) -> Any:
        assert always_call, "the hook after must run when a forward raises"
        return self._register(self._post, hook)

    def _register(self, hooks: dict[int, Callable[..., Any]], hook: Callable[..., Any]) -> Any:
        key = len(self._pre) + len(self._post) + 1
        hooks[key] = hook

        class Handle:
            def remove(self) -> None:
                hooks.pop(key, None)

        return Handle()

    def __call__(self) -> Any:
        for hook in list(self._pre.values()):
            hook(self, ())
        try:
            out = self._forward()
        finally:
            for hook in list(self._post.values()):
                hook(self, (), None)
        return out


def test_a_window_is_entered_and_exited_on_different_threads(manager: vr.Manager) -> None:
    sealed = manager.seal(weights(), model_id="m")
    window = manager.execute(sealed, mode="pipelined")
    assert window.mode == "pipelined"
    window.__enter__()
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(window.__exit__(None, None, None)))
    t.start()
    t.join(timeout=30)
    assert done == [False]
    with pytest.raises(vr.BadInput, match="already entered"):
        window.__enter__()


def test_every_mode_catches_a_change_during_the_block(token_env: bytes) -> None:
    for mode in ("before_and_after", "pipelined"):
        manager = vr.Manager(WORKER, backend="mock")
        w = weights()
        sealed = manager.seal(w, model_id="m")
        with pytest.raises(vr.IntegrityError) as caught:
            with manager.execute(sealed, mode=mode):
                w["layers.3.weight"][5, 5] += 1
        assert caught.value.kind == "ModifiedDuringExecution", mode
        assert caught.value.shard_id == "m:layers.3.weight"
        assert manager.is_stopped
    manager = vr.Manager(WORKER, backend="mock")
    w = weights()
    sealed = manager.seal(w, model_id="m")
    with manager.execute(sealed, mode="before"):
        w["layers.0.weight"][0, 0] += 1  # "before" does not look after the block
    with pytest.raises(vr.IntegrityError):
        manager.verify(sealed)


def test_a_stream_is_an_object_never_a_number(manager: vr.Manager) -> None:
    sealed = manager.seal(weights(), model_id="m")
    with pytest.raises(vr.BadInput, match="not a raw handle"):
        manager.execute(sealed, stream=12345)
    with pytest.raises(vr.BadInput, match="mode"):
        manager.execute(sealed, mode="after")  # type: ignore[arg-type]


def steps_until(scrubber: vr.Scrubber, done: Callable[[], bool]) -> None:
    """Steps until `done()` (within 10 s: a call works once the time since the last working
    call pays for it)."""
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "not done within 10 s"
        scrubber.step()
        time.sleep(0.0002)


def test_the_step_scrubber_covers_every_tensor_and_finds_a_change(manager: vr.Manager) -> None:
    w = weights()
    sealed = manager.seal(w, model_id="m")
    # The whole budget: a working call every few calls (the default 1 % pays for one only
    # after about 20 ms of the engine's steps).
    scrubber = manager.start_scrubber(mode="step", budget=1.0)
    assert scrubber.mode == "step"
    steps_until(scrubber, lambda: scrubber.verified >= len(w))
    assert scrubber.verified >= len(w)
    assert scrubber.bytes_verified >= sealed.nbytes
    w["layers.4.weight"][1, 2] = 7.5  # through NumPy, "in VRAM"
    with pytest.raises(vr.IntegrityError) as caught:
        steps_until(scrubber, lambda: False)
    assert caught.value.kind == "IntegrityViolation"
    assert caught.value.shard_id == "m:layers.4.weight"
    assert manager.is_stopped
    assert not scrubber.running
    verified = scrubber.verified
    with pytest.raises(vr.IntegrityError):
        scrubber.stop()
    assert scrubber.verified == verified  # kept after the stop


def test_a_step_scrubber_costs_next_to_nothing_until_its_budget_pays_for_a_call(
    manager: vr.Manager,
) -> None:
    sealed = manager.seal(weights(), model_id="m")
    scrubber = manager.start_scrubber(mode="step")  # 1 % of the engine's time
    for _ in range(1000):  # a tight loop: microseconds between calls earn too little
        scrubber.step()
    assert scrubber.bytes_verified == 0
    time.sleep(0.1)  # 1 % of 100 ms pays for a call
    scrubber.step()
    scrubber.stop()  # waits for the job that call queued
    assert scrubber.bytes_verified > 0
    del sealed


def test_step_belongs_to_step_scrubbers(manager: vr.Manager) -> None:
    manager.seal(weights(), model_id="m")
    with manager.start_scrubber(interval=60.0) as background:
        assert background.mode == "background"
        with pytest.raises(vr.BadInput, match="step"):
            background.step()
    with pytest.raises(vr.BadInput, match="budget"):
        manager.start_scrubber(mode="step", budget=0.0)
    with pytest.raises(vr.BadInput, match="mode"):
        manager.start_scrubber(mode="sometimes")  # type: ignore[arg-type]


def test_flat_sha256_has_no_step_scrubber(token_env: bytes) -> None:
    manager = vr.Manager(WORKER, backend="mock", algorithm="sha256")
    with pytest.raises(vr.BadInput, match="GPU kernel"):
        manager.start_scrubber(mode="step")


def test_hooks_check_each_forward_and_catch_changes_between_and_during(
    manager: vr.Manager,
) -> None:
    w = weights()
    sealed = manager.seal(w, model_id="m")
    ran: list[int] = []
    during: list[Callable[[], None]] = []

    def forward() -> int:
        ran.append(1)
        for change in during:
            change()
        return len(ran)

    module = FakeModule(forward)
    scrubber = manager.start_scrubber(mode="step", budget=1.0)
    handle = guard(module, manager, sealed, scrubber=scrubber)
    deadline = time.monotonic() + 10
    while scrubber.verified == 0 and time.monotonic() < deadline:
        module()
    assert handle.forwards == handle.checked >= 2
    assert scrubber.verified > 0

    # Changed between two forwards: the next one is refused before it runs.
    w["layers.2.weight"][0, 1] += 1
    before = len(ran)
    with pytest.raises(vr.IntegrityError) as caught:
        module()
    assert caught.value.kind == "IntegrityViolation"
    assert caught.value.shard_id == "m:layers.2.weight"
    assert len(ran) == before
    handle.remove()


def test_hooks_catch_a_change_made_during_the_forward(manager: vr.Manager) -> None:
    w = weights()
    sealed = manager.seal(w, model_id="m")

    def forward() -> None:
        w["layers.5.weight"][3, 3] *= -1

    module = FakeModule(forward)
    with guard(module, manager, sealed, mode="pipelined"):
        with pytest.raises(vr.IntegrityError) as caught:
            module()
    assert caught.value.kind == "ModifiedDuringExecution"
    assert caught.value.shard_id == "m:layers.5.weight"


def test_hooks_every_nth_forward_and_a_forward_that_raises(manager: vr.Manager) -> None:
    sealed = manager.seal(weights(), model_id="m")
    calls: list[int] = []

    def forward() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("engine error")

    module = FakeModule(forward)
    handle = guard(module, manager, sealed, every=2)
    module()
    with pytest.raises(RuntimeError, match="engine error"):
        module()
    for _ in range(4):
        module()
    assert handle.forwards == 6
    assert handle.checked == 3  # forwards 1, 3 and 5
    handle.remove()
    module()  # no hooks left
    assert handle.forwards == 6
    with pytest.raises(vr.BadInput, match="every"):
        guard(module, manager, sealed, every=0)
    with pytest.raises(vr.BadInput, match="step"):
        guard(module, manager, sealed, scrubber=manager.start_scrubber(interval=60.0))


def audit_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["background", "step"])
def test_scrubber_passes_are_summarised_in_the_audit_log(
    tmp_path: Path, token_env: bytes, mode: str
) -> None:
    log = tmp_path / "audit.log"
    manager = vr.Manager(WORKER, backend="mock", audit_log=log)
    w = weights()
    sealed = manager.seal(w, model_id="m")
    lines_after_seal = len(log.read_text().splitlines())
    if mode == "step":
        scrubber = manager.start_scrubber(mode="step", budget=1.0)
    else:
        scrubber = manager.start_scrubber(mode="background", interval=0.0)
    if mode == "step":
        steps_until(scrubber, lambda: scrubber.verified >= 200)
    else:
        deadline = time.monotonic() + 10
        while scrubber.verified < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
    scrubber.stop()
    verified = scrubber.verified
    assert verified >= 100
    events = audit_events(log)
    new = [e["event"] for e in events[lines_after_seal:]]
    # Hundreds of passes: one summary record (and the log's checkpoints), no record each.
    assert "SealVerified" not in new
    summaries = [e for e in events if e["event"] == "VerificationSummary"]
    assert len(summaries) == 1
    s = summaries[0]
    assert (s["scrubber"], s["gpu_device"], s["shards_verified"]) == (mode, 0, verified)
    assert s["bytes_verified"] == verified * 64 * 64 * 4
    assert len(log.read_bytes()) < 64 * 1024
    del sealed


def test_a_running_scrubber_does_not_keep_the_interpreter_from_exiting(
    tmp_path: Path, token_env: bytes
) -> None:
    script = tmp_path / "forgets_stop.py"
    script.write_text(
        "import numpy as np, vram_residency as vr\n"
        "m = vr.Manager('w', backend='mock')\n"
        "s = m.seal({'a': np.ones(1 << 16, dtype=np.float32)}, model_id='x')\n"
        "scrubber = m.start_scrubber(interval=0.0)\n"
        "print('started', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "started" in done.stdout


def test_the_default_background_scrubber_is_paced(manager: vr.Manager) -> None:
    """By default each tensor is re-proven once its proof is 10 s old (continuous scrubbing
    beside a host-bound engine costs it about 12 %); `verify_all_now` makes every one due."""
    sealed = manager.seal(weights(), model_id="m")
    with manager.start_scrubber() as scrubber:
        time.sleep(0.3)
        assert scrubber.verified == 0  # every proof is younger than 10 s
        scrubber.verify_all_now()
        deadline = time.monotonic() + 10
        while scrubber.verified < len(sealed) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scrubber.verified == len(sealed)
        time.sleep(0.3)
        assert scrubber.verified == len(sealed)  # and then rests again


def test_another_managers_model_is_bad_input_not_an_integrity_failure(token_env: bytes) -> None:
    a = vr.Manager(WORKER, backend="mock")
    b = vr.Manager("another-worker", backend="mock")
    sealed = a.seal(weights(), model_id="m")
    for call in (
        lambda: b.verify(sealed),
        lambda: b.execute(sealed),
        lambda: b.attest(sealed, b"nonce"),
        lambda: b.release(sealed),
    ):
        with pytest.raises(vr.BadInput, match="another manager"):
            call()
    assert not sealed.released and not a.is_stopped and not b.is_stopped
    a.verify(sealed)
    a.release(sealed)
    b.release(sealed)  # released: nothing left to refuse


def test_digest_refuses_what_seal_refuses() -> None:
    with pytest.raises(vr.BadInput, match="object arrays"):
        vr.digest(np.array([object(), object()], dtype=object))
    with pytest.raises(vr.BadInput, match="little-endian"):
        vr.digest(np.arange(4, dtype=">f4"))
    assert vr.digest(np.arange(4, dtype="<f4")) == vr.digest(np.arange(4, dtype=np.float32))


def test_lying_interfaces_and_bad_capacities_are_bad_input(token_env: bytes) -> None:
    for capacity in (-1, "lots", 2**80):
        with pytest.raises(vr.BadInput, match="mock_capacity"):
            vr.Manager(WORKER, backend="mock", mock_capacity=capacity)  # type: ignore[arg-type]
    manager = vr.Manager(WORKER, backend="mock")

    class Lying:
        def __init__(self, interface: dict[str, Any]) -> None:
            self.__cuda_array_interface__ = interface

    for interface in (
        {"data": (-1, False), "shape": (4,), "typestr": "<f4", "version": 3},
        {"data": (1 << 20, False), "shape": ("x",), "typestr": "<f4", "version": 3},
        {"data": (1 << 20, False), "shape": (-4,), "typestr": "<f4", "version": 3},
        {"data": "nowhere", "shape": (4,), "typestr": "<f4", "version": 3},
    ):
        with pytest.raises(vr.BadInput):
            manager.seal({"t": Lying(interface)}, model_id="m")


def test_releasing_a_model_is_linear_in_its_tensors(token_env: bytes) -> None:
    """Each released tensor used to count every live shard again: 20,000 tensors took 4.4 s
    and 100,000 took 147 s with the GIL held. Counted as they come and go, 20,000 take tens of
    milliseconds; the bound leaves room for a slow machine and still fails a quadratic walk."""
    manager = vr.Manager(WORKER, backend="mock")
    arrays = {f"t{i}": np.full(4, i % 256, dtype=np.uint8) for i in range(20_000)}
    sealed = manager.seal(arrays, model_id="m")
    assert 'vram_shards_resident{gpu_device="0"} 20000' in manager.metrics_text()
    start = time.perf_counter()
    manager.release(sealed)
    assert time.perf_counter() - start < 1.0
    assert 'vram_shards_resident{gpu_device="0"} 0' in manager.metrics_text()


def test_a_scrubber_round_is_not_quadratic_in_the_tensors(token_env: bytes) -> None:
    """Picking each next tensor by a walk over every live one made a round of 50,000 tensors
    take 612 s; a round now orders the tensors once. Tensors a second with 20,000 tensors stay
    near the rate with 100 (a quadratic walk gives a few percent of it)."""

    def rate(n: int) -> float:
        manager = vr.Manager(WORKER, backend="mock")
        arrays = {f"t{i}": np.full(64, i % 256, dtype=np.uint8) for i in range(n)}
        sealed = manager.seal(arrays, model_id="m")
        with manager.start_scrubber(interval=0.0) as scrubber:
            time.sleep(0.3)
            before, start = scrubber.verified, time.perf_counter()
            time.sleep(1.0)
            done = (scrubber.verified - before) / (time.perf_counter() - start)
        manager.release(sealed)
        return done

    small, large = rate(100), rate(20_000)
    assert large >= 0.25 * small, (small, large)


def test_a_log_reopened_with_an_unsigned_tail_warns(tmp_path: Path, token_env: bytes) -> None:
    import gc
    import hashlib
    import warnings

    log = tmp_path / "audit.log"
    manager = vr.Manager(WORKER, backend="mock", audit_log=log)
    manager.seal(weights(), model_id="m")
    del manager
    gc.collect()  # the manager's sink unlocks the log
    # A record linked on without the key, as anyone with write access could add it.
    last = log.read_text().splitlines()[-1]
    seq = len(log.read_text().splitlines())
    prev = hashlib.sha256(last.encode()).hexdigest()
    forged = json.dumps(
        {"seq": seq, "prev": prev, "timestamp_ms": 1, "time": "1970-01-01T00:00:00.001Z",
         "worker_id": WORKER, "correlation_id": "x", "severity": "info",
         "event": "SealVerified", "shard_id": "m:w", "gpu_device": 0},
        separators=(",", ":"),
    )
    with log.open("a") as f:
        f.write(forged + "\n")
    with pytest.warns(UserWarning, match="1 record.s. at its end were never signed"):
        vr.Manager(WORKER, backend="mock", audit_log=log)
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # signed on by the last open: nothing to warn of
        vr.Manager(WORKER, backend="mock", audit_log=log)
