"""Audit-log growth of continuous scrubbing on a real GPU (issue 33's target: the 32-layer
Llama of `engine_serving.py`, 291 tensors, 12.55 GiB, scrubbed continuously, grows the log by at
most 1 MB an hour). Seals the model with an audit log, runs the background scrubber with
`interval=0` (continuous) for SECONDS, stops it, and reports the verifications, the bytes the
log grew by and that growth per hour.

On a GPU machine with PyTorch and `transformers`, the package installed:
    VRAM_WORKER_TOKEN=bench-worker-token-0123 python benches/audit_volume.py [SECONDS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

import vram_residency as vr
from engine_serving import llama


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    model = llama(32)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "audit.log"
        manager = vr.Manager("audit-volume", algorithm="blake3", audit_log=log)
        sealed = manager.seal(model, model_id="llama")
        before = log.stat().st_size
        scrubber = manager.start_scrubber(interval=0.0)
        start = time.monotonic()
        time.sleep(seconds)
        scrubber.stop()
        took = time.monotonic() - start
        grew = log.stat().st_size - before
        print(
            f"device {torch.cuda.get_device_name()}: {len(sealed)} tensors, "
            f"{sealed.nbytes / 2**30:.2f} GiB, continuous background scrubber for {took:.1f} s: "
            f"{scrubber.verified} tensor verifications ({scrubber.verified / took:.0f}/s), "
            f"log grew {grew} bytes ({grew / took * 3600 / 1e6:.3f} MB an hour)"
        )
        manager.release(sealed)


if __name__ == "__main__":
    main()
