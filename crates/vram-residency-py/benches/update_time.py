"""How long a sealed model takes an update (issue 31): the 32-layer Llama of
`engine_serving.py` (13.5 GB of bf16, 291 tensors) sealed, then refitted in place and slept and
woken, each sealed again only on the sender's digests. Per algorithm, best of 3 after a
warm-up: the sender's `digest_tensors`, `begin_update`, and `update` (the receiver's digest in
VRAM, the comparison, the new seal). Usage: `python update_time.py [layers]`."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

import vram_residency as vr
from engine_serving import ALGORITHMS, llama


def timed(f: Any) -> tuple[float, Any]:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = f()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    model = llama(layers)
    weights = dict(model.state_dict())
    gb = sum(t.nbytes for t in weights.values()) / 1e9
    print(f"{torch.cuda.get_device_name()}, {layers} layers, {len(weights)} tensors, {gb:.2f} GB")
    for alg in ALGORITHMS:
        manager = vr.Manager("bench-worker", algorithm=alg)
        sealed = manager.seal(weights, model_id="llama")
        rows: dict[str, list[float]] = {"sender digest": [], "begin_update": [], "update (refit)": [], "update (wake)": []}
        for _ in range(4):
            t, sent = timed(lambda: vr.digest_tensors(weights, algorithm=alg))
            rows["sender digest"].append(t)
            t, _ = timed(lambda: manager.begin_update(sealed))
            rows["begin_update"].append(t)
            t, sealed = timed(lambda: manager.update(sealed, expect=sent))
            rows["update (refit)"].append(t)
            manager.begin_update(sealed)
            t, sealed = timed(lambda: manager.update(sealed, weights, expect=sent[0]))
            rows["update (wake)"].append(t)
        manager.verify(sealed)
        summary = ", ".join(f"{k} {min(v[1:]) * 1e3:.2f} ms" for k, v in rows.items())
        print(f"{alg:>18}: {summary}")
        manager.release(sealed)


if __name__ == "__main__":
    main()
