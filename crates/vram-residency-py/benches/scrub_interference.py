"""The library's scrubber beside real inference in one process (issue 23's table): a cuBLAS bf16
GEMM loop (compute-bound, 8192^3) and a decode-shaped loop (batch-1 GEMVs over bf16 weights,
memory-bound) run on a high-priority PyTorch stream, alone and then with
`Manager.start_scrubber(share=...)` re-verifying sealed weights; prints what the engine loses
and the bytes per second the scrubber keeps.

On a GPU machine with PyTorch, the package installed:
    VRAM_WORKER_TOKEN=bench-worker-token-0123 python benches/scrub_interference.py [GiB [ALGS]]
(default 16 GiB of sealed weights, needs that much free VRAM plus ~14 GiB; ALGS, comma-separated
digest algorithms, default `sha256-tree-65536,blake3`: each seals the same weights and is
measured beside the same workloads)."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import torch

import vram_residency as vr

GIB = 1 << 30


def timed(step: Callable[[], Any], seconds: float, stream: Any) -> float:
    """Steps per second of `step` on `stream`, over about `seconds`."""
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
        stream.synchronize()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(10):
                step()
            n += 10
            stream.synchronize()
        return n / (time.perf_counter() - start)


def main() -> None:
    size_gib = float(sys.argv[1]) if len(sys.argv) > 1 else 16.0
    props = torch.cuda.get_device_properties(0)
    print(f"device {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}")
    hi = torch.cuda.Stream(priority=-5)
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    layers = [torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(100)]
    x = torch.randn(8192, 1, device="cuda", dtype=torch.bfloat16)
    workloads: dict[str, Callable[[], Any]] = {
        "gemm 8192^3 bf16": lambda: torch.matmul(a, b),
        "decode (GEMV over 12.5 GiB)": lambda: [torch.matmul(w, x) for w in layers],
    }
    algorithms = sys.argv[2].split(",") if len(sys.argv) > 2 else ["sha256-tree-65536", "blake3"]
    chunk = 1 << 30
    weights = {
        f"w{i}": torch.randint(0, 256, (chunk,), dtype=torch.uint8, device="cuda")
        for i in range(int(size_gib * GIB) // chunk)
    }
    alone = {name: timed(step, 4.0, hi) for name, step in workloads.items()}
    for name, rate in alone.items():
        print(f"{name}: {rate:.1f} steps/s alone")
    for algorithm in algorithms:
        manager = vr.Manager(f"scrub-bench-{algorithm}", algorithm=algorithm)
        sealed = manager.seal(weights, model_id="bench")
        print(f"{algorithm}: sealed {sealed.nbytes / GIB:.1f} GiB in {len(sealed)} tensors")
        for name, step in workloads.items():
            print(f" beside {name}:")
            for share in (1 / 16, 1 / 8, 1 / 4, None):
                scrubber = manager.start_scrubber(share=share if share else 1.0)
                start, before = time.perf_counter(), scrubber.verified
                beside = timed(step, 4.0, hi)
                verified = scrubber.verified - before
                elapsed = time.perf_counter() - start
                scrubber.stop()
                rate = verified * (sealed.nbytes / len(sealed)) / elapsed / 1e9
                label = f"share {share:.4f}" if share else "whole GPU"
                print(
                    f"  {algorithm} scrubber {label}: engine {100 * (1 - beside / alone[name]):5.1f} % slower,"
                    f" scrubber {rate:6.1f} GB/s ({verified} tensors in {elapsed:.1f} s)"
                )
        manager.release(sealed)


if __name__ == "__main__":
    main()
