"""Hooks any PyTorch engine picks up: every top-level forward pass (each `generate` step, each
server step) of a module runs inside a verification window, and a step scrubber spends the
engine's own gaps re-verifying the weights.

    import vram_residency as vr
    from vram_residency.torch import guard

    sealed = manager.seal(model, model_id="llama-3-8b")
    handle = guard(model, manager, sealed, scrubber=manager.start_scrubber(mode="step"))
    out = model.generate(**inputs)     # every step checked; IntegrityError if a weight changed
    handle.remove()

What each forward proves depends on `mode` (see `Manager.execute`): `"before_and_after"` (the
default) checks the weights before the forward's kernels run and again after them, on the
GPU in the forward's stream order, and raises `IntegrityError` from the forward when they
changed, so its output is never returned; `"before"` checks before only; `"pipelined"` queues
both checks around the forward on the GPU and reads both verdicts when the forward returns.

CUDA graphs: a replayed graph runs no Python, so no hook. A forward captured into a graph is
refused (`BadInput`) rather than left unchecked at replay: wrap `graph.replay()` in
`manager.execute(sealed)` instead, which checks at the graph's boundaries.

The module needs no PyTorch to import: any object with `register_forward_pre_hook` and
`register_forward_hook` (`torch.nn.Module`'s) can be guarded, which is how the package's tests
drive it on the mock backend.
"""

from __future__ import annotations

import sys
from typing import Any, Literal, Protocol

from . import BadInput, Execution, Manager, Scrubber, SealedModel

__all__ = ["Guard", "guard"]

Mode = Literal["before", "before_and_after", "pipelined"]


class _Removable(Protocol):
    def remove(self) -> None: ...


class _Hookable(Protocol):
    def register_forward_pre_hook(self, hook: Any) -> _Removable: ...

    def register_forward_hook(self, hook: Any, *, always_call: bool = ...) -> _Removable: ...


def _capturing() -> bool:
    """Whether PyTorch is capturing a CUDA graph on the current stream."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    cuda = torch.cuda
    return bool(cuda.is_available() and cuda.is_current_stream_capturing())


class Guard:
    """The hooks `guard` put on a module. `remove()` takes them off (and closes a window left
    open by a forward that never returned); `checked` counts the forwards run inside a window,
    `forwards` every forward seen."""

    def __init__(
        self,
        module: _Hookable,
        manager: Manager,
        sealed: SealedModel,
        *,
        mode: Mode | None,
        every: int,
        scrubber: Scrubber | None,
        stream: Any,
    ) -> None:
        if every < 1:
            raise BadInput(f"every={every}: give 1 (every forward) or more")
        if scrubber is not None and scrubber.mode != "step":
            raise BadInput("scrubber: give a mode=\"step\" scrubber (a background one runs on its own)")
        self._manager = manager
        self._sealed = sealed
        self._mode: Mode | None = mode
        self._every = every
        self._scrubber = scrubber
        self._stream = stream
        self._open: Execution | None = None
        self.forwards = 0
        self.checked = 0
        self._handles = [
            module.register_forward_pre_hook(self._before),
            module.register_forward_hook(self._after, always_call=True),
        ]

    def _before(self, _module: Any, _args: Any) -> None:
        if _capturing():
            raise BadInput(
                "a forward captured into a CUDA graph runs no hook when the graph is replayed: "
                "remove the guard for the capture and wrap graph.replay() in manager.execute(sealed)"
            )
        if self._open is not None:  # a forward that raised before its hook after ran
            self._close()
        self.forwards += 1
        if self._mode is not None and (self.forwards - 1) % self._every == 0:
            window = self._manager.execute(self._sealed, mode=self._mode, stream=self._stream)
            window.__enter__()
            self._open = window
            self.checked += 1

    def _after(self, _module: Any, _args: Any, _output: Any) -> None:
        try:
            self._close()
        finally:
            if self._scrubber is not None:
                self._scrubber.step(self._stream)

    def _close(self) -> None:
        window, self._open = self._open, None
        if window is not None:
            window.__exit__(None, None, None)

    def remove(self) -> None:
        """Takes the hooks off; a window still open is closed (and checked)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()


def guard(
    module: _Hookable,
    manager: Manager,
    sealed: SealedModel,
    *,
    mode: Mode | None = "before_and_after",
    every: int = 1,
    scrubber: Scrubber | None = None,
    stream: Any = None,
) -> Guard:
    """Runs every top-level forward of `module` inside `manager.execute(sealed, mode=mode)`
    (every `every`-th forward; the others run unchecked, the step scrubber still steps; with
    `mode=None`, none), and, with a `mode="step"` `scrubber`, calls `scrubber.step()` after
    each forward. Windows and
    steps are ordered on `stream` (default PyTorch's current stream when the forward starts).
    A weight found changed raises `IntegrityError` from the forward (its output is not
    returned; the manager stops). Returns the `Guard`, whose `remove()` takes the hooks off."""
    return Guard(
        module, manager, sealed, mode=mode, every=every, scrubber=scrubber, stream=stream
    )
