"""Weights that move between ranks, checked where they lie, over the `torch.distributed` group
an engine already has (no transport of the package's own).

Verify on arrival: every rank of the group calls `broadcast_verified`; the sending rank digests
what it sends (in VRAM, `vram_residency.digest_tensors`), the digests travel with the broadcast,
and each receiving rank digests what arrived and re-seals its model (`Manager.update`) only if
the bytes are the ones sent:

    import vram_residency.distributed as vrd

    # each receiving rank: its sealed model takes the update
    arrival = vrd.broadcast_verified(weights, src=0, manager=manager, sealed=sealed)
    sealed = arrival.sealed                # IntegrityError (UpdateRefused) named the tensor

Compare replicas: ranks that must hold identical bytes (the data-parallel replicas of one
tensor-parallel shard) all-gather their model digests and name the odd rank out, tensor names
qualified by each rank's place (`tp=1/pp=0/model.layers.0.mlp.up_proj.weight`):

    replicas = vrd.compare_replicas(weights, group=dp_group, place={"tp": tp_rank, "pp": pp_rank})
    if not replicas.agree:
        raise RuntimeError(f"replicas differ: {replicas.differences}")

Every rank of the group must call each function, with the same `src`, algorithm and tensor
names, as with any collective. PyTorch is imported only when a collective is called.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import BadInput, IntegrityError, Manager, SealedModel, digest_tensors

__all__ = [
    "Arrival",
    "ArrivalMismatch",
    "RankDigests",
    "Replicas",
    "broadcast_verified",
    "compare_replicas",
    "qualify",
]

Digests = tuple[str, dict[str, str]]
"""`digest_tensors`'s answer: the model digest and each tensor's digest."""


def qualify(name: str, place: Mapping[str, int] | None) -> str:
    """`name` prefixed with a rank's place in the parallel layout, in the order given:
    `qualify("w", {"tp": 1, "pp": 0}) == "tp=1/pp=0/w"`; no place, the bare name."""
    if not place:
        return name
    return "/".join([*(f"{dim}={rank}" for dim, rank in place.items()), name])


class ArrivalMismatch(IntegrityError):
    """What arrived on this rank is not what the sending rank sent (a receiving rank given no
    manager; with one, `Manager.update` raises `IntegrityError` of kind `UpdateRefused`).
    `tensor` names the first tensor (in name order) whose digest differs, qualified by place."""

    kind: str
    tensor: str
    expected: str
    found: str
    rank: int

    def __init__(self, *, tensor: str, expected: str, found: str, rank: int) -> None:
        super().__init__(
            f"rank {rank}: {tensor!r} arrived as {found}, sent as {expected}: do not serve it"
        )
        self.kind = "ArrivalMismatch"
        self.tensor = tensor
        self.expected = expected
        self.found = found
        self.rank = rank


@dataclass(frozen=True)
class Arrival:
    """What `broadcast_verified` saw on this rank."""

    sent: Digests
    """The sending rank's digests, as they travelled with the broadcast."""
    sealed: SealedModel | None
    """The model re-sealed on the bytes that arrived (a receiving rank given a manager)."""
    sender: bool
    """Whether this rank sent."""


@dataclass(frozen=True)
class RankDigests:
    """One rank's digests in a replica comparison."""

    rank: int
    """Its rank in the default (world) group."""
    place: dict[str, int]
    model: str
    tensors: dict[str, str]


@dataclass(frozen=True)
class Replicas:
    """The model digests of ranks that must hold identical bytes, compared."""

    ranks: list[RankDigests]
    """Every rank's digests, in the group's rank order."""
    reference: str | None
    """The digest the others are judged against: `expect` when given, else the digest a strict
    majority holds; `None` when no digest has a majority (two replicas that differ)."""
    odd: list[int] = field(default_factory=list)
    """Ranks (world ranks) whose model digest is not `reference`; every rank when there is no
    reference and the digests differ."""
    differences: list[str] = field(default_factory=list)
    """Tensors that differ, qualified by each odd rank's place: against `expect`'s per-tensor
    digests or a rank holding `reference`; with no reference, each tensor the ranks do not all
    agree on, on every rank. (A bare `expect` no rank holds names no tensor.)"""

    @property
    def agree(self) -> bool:
        """Whether every rank holds the reference bytes."""
        return not self.odd

    @staticmethod
    def judge(
        ranks: Sequence[RankDigests], expect: str | Digests | None = None
    ) -> Replicas:
        """Compares gathered digests (what `compare_replicas` does once every rank's are in)."""
        ranks = list(ranks)
        expected_each: dict[str, str] | None = None
        if isinstance(expect, tuple):
            reference: str | None = expect[0]
            expected_each = dict(expect[1])
        elif expect is not None:
            reference = expect
        else:
            counts = Counter(r.model for r in ranks)
            top, n = counts.most_common(1)[0] if counts else ("", 0)
            reference = top if 2 * n > len(ranks) else None
        names = sorted({name for r in ranks for name in r.tensors})
        if reference is None:
            if len({r.model for r in ranks}) <= 1:
                return Replicas(ranks=ranks, reference=ranks[0].model if ranks else None)
            # No reference: every rank is odd, on each tensor the ranks do not all agree on.
            odd = ranks
            split = {n for n in names if len({r.tensors.get(n) for r in ranks}) > 1}
            differences = [qualify(n, r.place) for r in odd for n in names if n in split]
        else:
            odd = [r for r in ranks if r.model != reference]
            if expected_each is None:
                holder = next((r for r in ranks if r.model == reference), None)
                expected_each = holder.tensors if holder is not None else {}
            differences = [
                qualify(n, r.place)
                for r in odd
                for n in sorted(set(r.tensors) | set(expected_each))
                if r.tensors.get(n) != expected_each.get(n)
            ]
        return Replicas(
            ranks=ranks,
            reference=reference,
            odd=[r.rank for r in odd],
            differences=differences,
        )


def _bad_input(field_name: str, reason: str) -> BadInput:
    """A `BadInput` with the attributes the library's own carry (`kind`, `field`, `reason`)."""
    e = BadInput(f"invalid {field_name}: {reason}")
    e.kind = "InvalidInput"
    setattr(e, "field", field_name)
    setattr(e, "reason", reason)
    return e


def _named(tensors: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A `torch.nn.Module`'s state dict, or the mapping given."""
    if hasattr(tensors, "state_dict") and hasattr(tensors, "named_parameters"):
        return dict(tensors.state_dict())
    if not isinstance(tensors, Mapping):
        raise _bad_input("tensors", "give a torch.nn.Module or a mapping of names to tensors")
    return dict(tensors)


def _dist() -> Any:
    try:
        dist = importlib.import_module("torch.distributed")
    except ImportError as e:
        raise _bad_input("torch", "vram_residency.distributed needs PyTorch") from e
    if not dist.is_available() or not dist.is_initialized():
        raise _bad_input(
            "group",
            "torch.distributed has no process group: call torch.distributed.init_process_group first",
        )
    return dist


def _layout(named: Mapping[str, Any]) -> list[tuple[str, str, tuple[int, ...], int]]:
    """Name, dtype, shape and byte count of every tensor, in name order."""
    return [
        (name, str(t.dtype), tuple(int(d) for d in t.shape), int(t.nbytes))
        for name, t in sorted(named.items())
    ]


def broadcast_verified(
    tensors: Mapping[str, Any] | Any,
    *,
    src: int,
    group: Any = None,
    algorithm: str = "blake3",
    manager: Manager | None = None,
    sealed: SealedModel | None = None,
    place: Mapping[str, int] | None = None,
) -> Arrival:
    """Broadcasts `tensors` from rank `src` to every rank of `group` (each rank's tensors
    are written in place, in name order, with `torch.distributed.broadcast`), with the sending
    rank's digests travelling ahead of them; each receiving rank digests what arrived where it
    lies. A receiving rank given `manager` and `sealed` (the model those tensors are sealed
    in) announces the update before the first byte lands (unless it already did:
    `Manager.begin_update`) and re-seals only on the bytes sent (`Manager.update` with the
    sender's digests); given neither, it compares the digests itself.

    The ranks first compare their tensors' names, dtypes, shapes and sizes (all-gathered):
    if any rank's differ, every rank raises `BadInput` before a byte is sent.

    Raises `IntegrityError` (kind `UpdateRefused`, from `Manager.update`) or `ArrivalMismatch`
    naming the first tensor that arrived other than it was sent (qualified by `place`);
    `BadInput` for a layout that differs between ranks, a manager without a sealed model, or
    no process group."""
    dist = _dist()
    if (manager is None) != (sealed is None):
        raise _bad_input(
            "manager", "give a receiving rank's manager and its sealed model together, or neither"
        )
    named = _named(tensors)
    layouts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(layouts, _layout(named), group=group)
    if any(layout != layouts[0] for layout in layouts):
        raise _bad_input(
            "tensors", "the ranks' tensors differ in names, dtypes, shapes or sizes: nothing was sent"
        )
    rank = dist.get_rank()
    sender = rank == src
    payload: list[Any] = [digest_tensors(named, algorithm=algorithm) if sender else None]
    dist.broadcast_object_list(payload, src=src, group=group)
    model, each = payload[0]
    sent: Digests = (str(model), dict(each))
    if sender:
        for name in sorted(named):
            dist.broadcast(named[name], src=src, group=group)
        return Arrival(sent=sent, sealed=None, sender=True)
    if manager is not None and sealed is not None:
        manager.begin_update(sealed)  # announcing twice is allowed
    for name in sorted(named):
        dist.broadcast(named[name], src=src, group=group)
    if manager is not None and sealed is not None:
        resealed = manager.update(sealed, named, expect=sent)
        return Arrival(sent=sent, sealed=resealed, sender=False)
    found_model, found = digest_tensors(named, algorithm=algorithm)
    if found_model != sent[0]:
        name = next((n for n in sorted(found) if found[n] != sent[1].get(n)), "")
        raise ArrivalMismatch(
            tensor=qualify(name, place),
            expected=sent[1].get(name, sent[0]),
            found=found.get(name, found_model),
            rank=rank,
        )
    return Arrival(sent=sent, sealed=None, sender=False)


def compare_replicas(
    tensors: Mapping[str, Any] | Any | Digests,
    *,
    group: Any = None,
    algorithm: str = "blake3",
    place: Mapping[str, int] | None = None,
    expect: str | Digests | None = None,
) -> Replicas:
    """Every rank of `group` digests its tensors where they lie (or gives the digests it
    already has, `digest_tensors`'s pair), all-gathers them with its world rank and `place`,
    and each rank gets the same comparison: the ranks whose model digest is not the reference
    (`expect`, else the strict majority's) and the tensors that differ, qualified by place.

    Raises `BadInput` for no process group; what `digest_tensors` raises."""
    dist = _dist()
    if isinstance(tensors, tuple):
        model, each = tensors
    else:
        model, each = digest_tensors(_named(tensors), algorithm=algorithm)
    mine = RankDigests(
        rank=dist.get_rank(), place=dict(place or {}), model=str(model), tensors=dict(each)
    )
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, mine, group=group)
    return Replicas.judge(gathered, expect)
