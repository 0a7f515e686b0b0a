"""Digests of GPU tensors with no manager (`vram_residency.digest_tensors`), against one range
of the same size and against the host path RL weight checkers use today (`.cpu()` + hashlib),
measured side by side in one run. Usage: `python digest_tensors.py [GiB] [tensors]`."""

from __future__ import annotations

import hashlib
import statistics
import sys
import time
from typing import Any

import torch

import vram_residency as vr


def best(f: Any, runs: int = 5) -> float:
    f()  # warm: kernels loaded, lanes made
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    gib = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    total = int(gib * (1 << 30)) // count // 2 * 2 * count
    per = total // count // 2  # bf16 elements per tensor
    tensors = {f"layer.{i}.weight": torch.randn(per, dtype=torch.bfloat16, device="cuda") for i in range(count)}
    one = torch.empty(per * count, dtype=torch.bfloat16, device="cuda")
    mib = torch.randn(1 << 19, dtype=torch.bfloat16, device="cuda")
    gb = per * count * 2 / 1e9
    print(f"{torch.cuda.get_device_name()}, {count} tensors, {gb:.2f} GB of bf16")
    for alg in ("blake3", "sha256-tree-65536"):
        many = best(lambda: vr.digest_tensors(tensors, algorithm=alg))
        single = best(lambda: vr.digest(one, algorithm=alg))
        print(
            f"{alg:>18}: {count} tensors {many * 1e3:8.2f} ms ({gb / many:7.1f} GB/s), "
            f"one range {single * 1e3:8.2f} ms ({gb / single:7.1f} GB/s), ratio {many / single:.3f}"
        )
    small = [best(lambda: vr.digest(mib, algorithm="blake3"), runs=50) for _ in range(3)]
    print(f"1 MiB blake3: {statistics.median(small) * 1e6:.0f} us")
    # The host path of today's weight checkers, on a part (it is slow), scaled.
    part = list(tensors.values())[: max(1, count // 20)]
    part_gb = sum(t.numel() * 2 for t in part) / 1e9

    def host() -> None:
        for t in part:
            hashlib.sha256(t.view(torch.uint8).cpu().numpy().tobytes()).hexdigest()

    h = best(host, runs=2)
    print(f"host .cpu() + hashlib.sha256: {part_gb / h:.2f} GB/s ({gb / (part_gb / h):.1f} s for all)")


if __name__ == "__main__":
    main()
