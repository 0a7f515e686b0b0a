"""The package inside a real engine (issue 30's table): a `transformers` Llama built from a
config (hidden 4096, LAYERS layers, bf16, random weights) generating batch-1 greedy tokens on
PyTorch's default stream, alone and with each of the package's checks on, in one process:

- the hooks alone (`guard(..., mode=None)` with no scrubber): what the hook calls cost;
- the step scrubber (`vram_residency.torch.guard(..., mode=None, scrubber=...)`): tokens/s
  against plain, the GB/s it re-verifies, and the host time of each `step()` call, per
  digest algorithm;
- the background scrubber with its defaults beside the same generation;
- each window mode around whole requests (`with manager.execute(sealed, mode=...)`): its added
  time per request against the GPU time of its digests (`manager.verify`).

Each condition runs between two plain requests and its "of plain" is the median, over the
rounds, of its time against the mean of those two: the machine's speed drifts by 10-20 % over
seconds, more than the effects measured.

On a GPU machine with PyTorch and `transformers`, the package installed:
    VRAM_WORKER_TOKEN=bench-worker-token-0123 python benches/engine_serving.py [LAYERS [ROUNDS]]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any, Callable

import torch

import vram_residency as vr
from vram_residency.torch import guard

TOKENS = 32
ALGORITHMS = ("blake3", "sha256-tree-65536")


def llama(layers: int) -> Any:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    return model.eval()


def request(model: Any) -> float:
    """Seconds for one batch-1 greedy request of TOKENS tokens, on the default stream."""
    prompt = torch.tensor([[1, 306, 4966, 445, 338]], device="cuda")
    with torch.no_grad():
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(
            prompt, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False, pad_token_id=0
        )
        torch.cuda.synchronize()
    return time.perf_counter() - start


class _Timed:
    """A step scrubber whose `step()` calls are timed on the host (what the hook costs the
    engine's host thread, which bounds a host-bound engine)."""

    mode = "step"

    def __init__(self, scrubber: vr.Scrubber) -> None:
        self.scrubber = scrubber
        self.seconds: list[float] = []

    def step(self, stream: Any = None) -> None:
        start = time.perf_counter()
        try:
            self.scrubber.step(stream)
        finally:
            self.seconds.append(time.perf_counter() - start)


def _stepping(
    model: Any, manager: vr.Manager, sealed: vr.SealedModel, timed: _Timed
) -> Callable[[], tuple[float, float]]:
    def step() -> tuple[float, float]:
        hooks = guard(model, manager, sealed, mode=None, scrubber=timed)  # type: ignore[arg-type]
        before = timed.scrubber.bytes_verified
        try:
            t = request(model)
        finally:
            hooks.remove()
        return t, (timed.scrubber.bytes_verified - before) / t / 1e9

    return step


def main() -> None:
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    props = torch.cuda.get_device_properties(0)
    print(
        f"device {props.name}, torch {torch.__version__}, "
        f"Llama hidden 4096 x {layers} layers bf16, {TOKENS}-token batch-1 greedy requests"
    )
    model = llama(layers)
    for _ in range(3):  # warm-up: allocator, cuBLAS heuristics
        request(model)
    managers = {a: vr.Manager(f"bench-{a}", algorithm=a) for a in ALGORITHMS}
    sealed = {a: m.seal(model, model_id="llama") for a, m in managers.items()}
    nbytes = next(iter(sealed.values())).nbytes
    print(f"sealed {len(next(iter(sealed.values())))} tensors, {nbytes / 2**30:.2f} GiB")

    conditions: dict[str, Callable[[], tuple[float, float]]] = {}

    def plain() -> tuple[float, float]:
        return request(model), 0.0

    conditions["plain"] = plain  # against its neighbours: the noise of the method

    def hooks_only() -> tuple[float, float]:
        a = ALGORITHMS[0]
        hooks = guard(model, managers[a], sealed[a], mode=None)
        try:
            return request(model), 0.0
        finally:
            hooks.remove()

    conditions["hooks alone (mode=None, no scrubber)"] = hooks_only
    step_host: dict[str, list[float]] = {}
    for a in ALGORITHMS:
        manager, s = managers[a], sealed[a]

        # One step scrubber a manager (and budget) for the whole run: its round-robin and its
        # measured rate carry from one request to the next, as in a server. Other budgets show
        # whether the cost follows the GPU work (it scales) or the calls (it does not).
        for budget in (0.01,):
            label = a if budget == 0.01 else f"{a}, budget {budget}"
            timed = _Timed(manager.start_scrubber(mode="step", budget=budget))
            step_host[label] = timed.seconds
            conditions[f"step scrubber, {label}"] = _stepping(model, manager, s, timed)

        def background(manager: vr.Manager = manager) -> tuple[float, float]:
            scrubber = manager.start_scrubber()
            try:
                t = request(model)
            finally:
                scrubber.stop()
            return t, scrubber.verified / t

        conditions[f"background scrubber (defaults), {a}"] = background
        for mode in ("before", "before_and_after", "pipelined"):

            def window(
                manager: vr.Manager = manager, s: vr.SealedModel = s, mode: str = mode
            ) -> tuple[float, float]:
                start = time.perf_counter()
                with manager.execute(s, mode=mode):  # type: ignore[arg-type]
                    request(model)
                return time.perf_counter() - start, 0.0

            conditions[f"window {mode}, {a}"] = window

    # Each condition runs between two plain requests and is compared with their mean: the
    # machine's speed drifts by 10-20 % over seconds (measured), far more than the effects.
    # `SERVING_ONLY=step` keeps plain, the hooks and the step scrubbers (a short run).
    if os.environ.get("SERVING_ONLY") == "step":
        conditions = {
            k: v for k, v in conditions.items() if k == "plain" or k.startswith(("hooks", "step"))
        }
    times: dict[str, list[float]] = {k: [] for k in conditions}
    ratios: dict[str, list[float]] = {k: [] for k in conditions}
    extra: dict[str, list[float]] = {k: [] for k in conditions}
    for _ in range(rounds):
        before = request(model)
        for name, run in conditions.items():
            t, x = run()
            after = request(model)
            times[name].append(t)
            ratios[name].append((before + after) / 2 / t)
            extra[name].append(x)
            times["plain"].append(after)
            before = after
    digest_ms: dict[str, float] = {}
    for a in ALGORITHMS:
        samples = []
        for _ in range(10):
            start = time.perf_counter()
            managers[a].verify(sealed[a])
            samples.append(time.perf_counter() - start)
        digest_ms[a] = 1e3 * statistics.median(samples)
        print(f"one digest of the model ({a}): {digest_ms[a]:.2f} ms (median of 10 verify calls)")

    base = statistics.median(times["plain"])
    print(f"{'condition':44s} {'tokens/s':>9s} {'of plain':>9s}  extra")
    for name in conditions:
        t = statistics.median(times[name])
        x = statistics.median(extra[name])
        ratio = statistics.median(ratios[name])
        line = f"{name:44s} {TOKENS / t:9.2f} {100 * ratio:8.1f} %"
        if name.startswith("step"):
            host = step_host[name.split(", ", 1)[1]]
            share = sum(host) / sum(times[name])
            line += (
                f"  {x:6.1f} GB/s re-verified (the model every {nbytes / 1e9 / max(x, 1e-9):.2f} s);"
                f" step() calls: {len(host)}, host time mean {1e6 * statistics.fmean(host):.0f} us,"
                f" max {1e6 * max(host):.0f} us, {100 * share:.2f} % of the requests' time"
            )
        elif name.startswith("background"):
            line += f"  {x:8.1f} tensors/s re-verified"
        elif name.startswith("window"):
            a = name.rsplit(", ", 1)[1]
            digests = 1 if " before," in name else 2
            added = 1e3 * (t - base)
            line += (
                f"  +{added:7.2f} ms a request; its {digests} digest(s) {digests * digest_ms[a]:.2f} ms"
            )
        print(line, flush=True)
    for m, s in zip(managers.values(), sealed.values()):
        m.release(s)


if __name__ == "__main__":
    main()
