"""Digests of GPU tensors with no manager (`vram_residency.digest_tensors`), against one range
of the same size and against the host path RL weight checkers use today (`.cpu()` + hashlib),
measured side by side in one run, and the host side of a call alone (as many tensors of 1 KiB).
Usage: `python digest_tensors.py [GB] [counts, comma-separated]`."""

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
    gb_total = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    counts = [int(c) for c in sys.argv[2].split(",")] if len(sys.argv) > 2 else [300, 500, 1000]
    print(torch.cuda.get_device_name())
    tensors: dict[str, Any] = {}
    for count in counts:
        tensors.clear()
        torch.cuda.empty_cache()
        per = int(gb_total * 1e9) // count // 2  # bf16 elements per tensor
        tensors.update(
            {f"layer.{i}.weight": torch.randn(per, dtype=torch.bfloat16, device="cuda") for i in range(count)}
        )
        one = torch.empty(per * count, dtype=torch.bfloat16, device="cuda")
        # What the host side of a call costs: as many tensors of 1 KiB each.
        tiny = {n: torch.zeros(512, dtype=torch.bfloat16, device="cuda") for n in tensors}
        gb = per * count * 2 / 1e9
        print(f"{count} tensors, {gb:.2f} GB of bf16")
        for alg in ("blake3", "sha256-tree-65536"):
            many = best(lambda: vr.digest_tensors(tensors, algorithm=alg))
            single = best(lambda: vr.digest(one, algorithm=alg))
            fixed = best(lambda: vr.digest_tensors(tiny, algorithm=alg))
            print(
                f"{alg:>18}: {count} tensors {many * 1e3:8.2f} ms ({gb / many:7.1f} GB/s), "
                f"one range {single * 1e3:8.2f} ms ({gb / single:7.1f} GB/s), ratio {many / single:.3f}; "
                f"{count} tensors of 1 KiB {fixed * 1e3:.2f} ms"
            )
        del one, tiny
    mib = torch.randn(1 << 19, dtype=torch.bfloat16, device="cuda")
    small = [best(lambda: vr.digest(mib, algorithm="blake3"), runs=50) for _ in range(3)]
    print(f"1 MiB blake3: {statistics.median(small) * 1e6:.0f} us")
    # The host path of today's weight checkers, on a part (it is slow), scaled.
    part = list(tensors.values())[:25]
    part_gb = sum(t.numel() * 2 for t in part) / 1e9

    def host() -> None:
        for t in part:
            hashlib.sha256(t.view(torch.uint8).cpu().numpy().tobytes()).hexdigest()

    h = best(host, runs=2)
    print(f"host .cpu() + hashlib.sha256: {part_gb / h:.2f} GB/s ({gb_total / (part_gb / h):.1f} s for {gb_total:g} GB)")


if __name__ == "__main__":
    main()
