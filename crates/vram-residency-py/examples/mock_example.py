"""End to end on the mock backend, no GPU needed: seal a model's weights where they lie, verify
them before each request, and catch a weight changed during a forward pass.

    VRAM_WORKER_TOKEN=example-worker-token-0123 python examples/mock_example.py

On a GPU, build the manager with backend="cuda" (the default) and seal a torch.nn.Module.
"""

from __future__ import annotations

import numpy as np

import vram_residency as vr


def main() -> None:
    manager = vr.Manager("example-worker", backend="mock")
    weights = {
        "layer.0.weight": np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32),
        "layer.0.bias": np.zeros(256, dtype=np.float32),
    }
    sealed = manager.seal(weights, model_id="example")
    print(f"sealed {len(sealed)} tensors, {sealed.nbytes} bytes: {sealed.digest}")

    x = np.ones(256, dtype=np.float32)
    with manager.execute(sealed):  # verified before, and again after the "forward pass"
        y = weights["layer.0.weight"] @ x + weights["layer.0.bias"]
    print(f"request 1 served, y[0] = {y[0]:.4f}")

    try:
        with manager.execute(sealed):
            weights["layer.0.bias"][7] = 1.0  # a bug writes into the weights mid-request
            y = weights["layer.0.weight"] @ x + weights["layer.0.bias"]
        print("request 2 served (this must not happen)")
        raise SystemExit(1)
    except vr.IntegrityError as e:
        print(f"request 2 withheld: {e.kind} in {e.shard_id}")
    print(f"manager stopped: {manager.is_stopped}")


if __name__ == "__main__":
    main()
