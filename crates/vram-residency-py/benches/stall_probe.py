"""What stalls a PyTorch engine on the default stream beside a background verifier (issue 30).

Times an engine three ways, alone and beside each pattern of driver calls that
`crates/vram-cuda-sys/benches/cuda/stall_probe.cpp` runs on a native thread (no GIL) in the same
primary context, then beside the package's own scrubber:
- 2,000 tiny PyTorch launches on the default (legacy) stream, and on a side stream;
- a pure-Python loop (host contention: the GIL, a spinning waiter);
- batch-1 greedy `transformers` generation (a Llama built from a config) on the default stream.

On a GPU machine with PyTorch and `transformers` (and the package installed for its rows):
    nvcc -O2 -std=c++20 -shared -Xcompiler -fPIC -o /tmp/libstall_probe.so \
        crates/vram-cuda-sys/benches/cuda/stall_probe.cpp -lcuda
    VRAM_WORKER_TOKEN=bench-worker-token-0123 python stall_probe.py /tmp/libstall_probe.so \
        crates/vram-cuda-sys/kernels/blake3_tree.ptx [LAYERS]
"""

from __future__ import annotations

import ctypes
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch

from engine_serving import llama  # the same model, built the same way

PATTERNS = {
    "bounded launches + stream wait": 1,
    "+ pool scratch and trim": 1 | 2,
    "+ sync DtoH copy (legacy stream)": 1 | 4,
    "+ root to pageable memory": 1 | 8,
    "+ pointer attributes": 1 | 16,
    "all of the engine's calls": 1 | 2 | 4 | 8 | 16,
    "bounded, blocking-sync event wait": 1 | 32,
    "bounded, after the legacy stream's work": 1 | 128,
    "whole-GPU launches + stream wait": 64,
}


def tiny_launches(stream: Any | None) -> float:
    """Milliseconds for 2,000 one-element adds queued and finished on `stream` (None: default)."""
    x = torch.zeros(1, device="cuda")
    s = stream or torch.cuda.default_stream()
    with torch.cuda.stream(s):
        s.synchronize()
        start = time.perf_counter()
        for _ in range(2000):
            x.add_(1)
        s.synchronize()
    return (time.perf_counter() - start) * 1e3


def python_loop() -> float:
    """Milliseconds of a pure-Python loop (no GPU work)."""
    start = time.perf_counter()
    n = 0
    for i in range(1_000_000):
        n += i & 7
    return (time.perf_counter() - start) * 1e3


def median_of(f: Callable[[], float], n: int = 3) -> float:
    return float(statistics.median(f() for _ in range(n)))


def tokens_per_second(model: Any, tokens: int = 24) -> float:
    prompt = torch.tensor([[1, 306, 4966, 445, 338]], device="cuda")
    with torch.no_grad():
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(
            prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0
        )
        torch.cuda.synchronize()
    return float((out.shape[1] - prompt.shape[1]) / (time.perf_counter() - start))


def row(label: str, measure: Callable[[], dict[str, float]], base: dict[str, float]) -> None:
    m = measure()
    cells = "  ".join(
        f"{k} {v:8.1f} ({v / base[k]:5.2f}x)" if k in base else f"{k} {v:8.1f}" for k, v in m.items()
    )
    print(f"{label:42s} {cells}", flush=True)


def main() -> None:
    lib_path, ptx_path = sys.argv[1], sys.argv[2]
    layers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    props = torch.cuda.get_device_properties(0)
    print(f"device {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}")
    torch.zeros(1, device="cuda")  # the primary context, made current by PyTorch
    lib = ctypes.CDLL(lib_path)
    lib.probe_stop.restype = ctypes.c_ulonglong
    assert lib.probe_init(ptx_path.encode()) == 0
    side = torch.cuda.Stream()
    model = llama(layers)
    for _ in range(3):  # warm-up: allocator, cuBLAS heuristics (the first requests are slow)
        tokens_per_second(model)

    def engine() -> dict[str, float]:
        return {
            "tiny default ms": median_of(lambda: tiny_launches(None)),
            "tiny side ms": median_of(lambda: tiny_launches(side)),
            "python ms": median_of(python_loop),
            "tok/s": tokens_per_second(model),
        }

    base = engine()
    row("alone", lambda: base, {})

    def beside_probe(pattern: int) -> Callable[[], dict[str, float]]:
        def measure() -> dict[str, float]:
            lib.probe_start(pattern)
            start = time.perf_counter()
            m = engine()
            n = lib.probe_stop()
            m["probe GB/s"] = n * 256 * (1 << 20) / (time.perf_counter() - start) / 1e9
            return m

        return measure

    # STALL_PROBE_PACKAGE_ONLY=1: the package's rows alone (another build of it, same run).
    if os.environ.get("STALL_PROBE_PACKAGE_ONLY") != "1":
        for label, pattern in PATTERNS.items():
            row(label, beside_probe(pattern), base)

    try:
        import vram_residency as vr
    except ImportError:
        print("vram_residency is not installed: no rows for the package's scrubber")
        return
    for algorithm in ("sha256-tree-65536", "blake3"):
        manager = vr.Manager(f"probe-{algorithm}", algorithm=algorithm)
        sealed = manager.seal(model, model_id="probe")

        def beside_scrubber() -> dict[str, float]:
            scrubber = manager.start_scrubber()
            start, before = time.perf_counter(), scrubber.verified
            m = engine()
            verified = scrubber.verified - before
            scrubber.stop()
            m["tensors/s"] = verified / (time.perf_counter() - start)
            return m

        row(f"package scrubber, {algorithm}", beside_scrubber, base)

        def beside_step_scrubber() -> dict[str, float]:
            scrubber = manager.start_scrubber(mode="step")
            hook = model.register_forward_hook(lambda *_: scrubber.step())
            start, before = time.perf_counter(), scrubber.bytes_verified
            try:
                m = {"tok/s": tokens_per_second(model, 48)}
            finally:
                hook.remove()
            m["scrub GB/s"] = (scrubber.bytes_verified - before) / (time.perf_counter() - start) / 1e9
            scrubber.stop()
            return m

        try:
            row(f"package step scrubber, {algorithm}", beside_step_scrubber, base)
        except TypeError as e:  # a build without the step mode
            print(f"no step scrubber in this build: {e}")
        manager.release(sealed)


if __name__ == "__main__":
    main()
