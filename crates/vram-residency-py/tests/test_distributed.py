"""`vram_residency.distributed`: the comparison rules on their own (no PyTorch needed), and two
real processes over `torch.distributed`'s gloo backend: a broadcast verified on arrival (a
receiving rank re-sealed on what was sent; a byte flipped in transit refused, the tensor named)
and a replica comparison naming the odd rank out. The two-process tests need PyTorch: on a GPU
(`VRAM_TEST_GPU=1`) with CUDA tensors and the CUDA backend, elsewhere with CPU tensors and no
manager; each is skipped, with its reason, where it cannot run."""

from __future__ import annotations

import datetime
import importlib.util
import os
import tempfile
from typing import Any

import pytest

import vram_residency as vr
from vram_residency.distributed import RankDigests, Replicas, qualify

from conftest import gpu_tests_enabled

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def test_names_are_qualified_by_the_ranks_place_in_the_order_given() -> None:
    assert qualify("model.norm.weight", {"tp": 1, "pp": 0}) == "tp=1/pp=0/model.norm.weight"
    assert qualify("w", {"pp": 3, "tp": 0, "ep": 2}) == "pp=3/tp=0/ep=2/w"
    assert qualify("w", None) == qualify("w", {}) == "w"


def ranks(*models: tuple[str, dict[str, str]]) -> list[RankDigests]:
    return [
        RankDigests(rank=10 + i, place={"tp": 1, "dp": i}, model=m, tensors=t)
        for i, (m, t) in enumerate(models)
    ]


GOOD = ("vram-model-v1:aa", {"a": "blake3:01", "b": "blake3:02"})
BAD_B = ("vram-model-v1:bb", {"a": "blake3:01", "b": "blake3:ff"})


def test_identical_replicas_agree() -> None:
    r = Replicas.judge(ranks(GOOD, GOOD, GOOD))
    assert r.agree and r.reference == GOOD[0] and r.odd == [] and r.differences == []


def test_the_odd_rank_out_is_named_against_the_majority_with_its_tensors_qualified() -> None:
    r = Replicas.judge(ranks(GOOD, BAD_B, GOOD))
    assert not r.agree
    assert r.reference == GOOD[0]
    assert r.odd == [11]
    assert r.differences == ["tp=1/dp=1/b"]


def test_two_replicas_that_differ_have_no_majority_unless_a_reference_is_given() -> None:
    split = Replicas.judge(ranks(GOOD, BAD_B))
    assert split.reference is None
    assert split.odd == [10, 11]
    assert split.differences == ["tp=1/dp=0/b", "tp=1/dp=1/b"]
    judged = Replicas.judge(ranks(GOOD, BAD_B), expect=GOOD)
    assert (judged.reference, judged.odd, judged.differences) == (GOOD[0], [11], ["tp=1/dp=1/b"])
    # A bare model digest as the reference: the tensors are compared with a rank that holds it.
    bare = Replicas.judge(ranks(BAD_B, GOOD), expect=GOOD[0])
    assert (bare.odd, bare.differences) == ([10], ["tp=1/dp=0/b"])


def test_a_tensor_one_rank_lacks_is_a_difference() -> None:
    short = ("vram-model-v1:cc", {"a": "blake3:01"})
    r = Replicas.judge(ranks(GOOD, GOOD, short))
    assert r.odd == [12] and r.differences == ["tp=1/dp=2/b"]


def test_collectives_without_a_process_group_are_refused_as_bad_input() -> None:
    if not HAVE_TORCH:
        pytest.skip("PyTorch is not installed: torch.distributed cannot be asked for a group")
    import vram_residency.distributed as vrd

    with pytest.raises(vr.BadInput) as caught:
        vrd.compare_replicas({"a": bytes(4)})
    assert caught.value.kind == "InvalidInput"


# Two processes over gloo. Each worker raises on a failed check; spawn re-raises it here.


def _weights(torch: Any, device: str, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(*shape, generator=g).to(device=device, dtype=torch.bfloat16)
        for name, shape in [("embed.weight", (64, 32)), ("layers.0.mlp.weight", (32, 96)), ("norm.weight", (32,))]
    }


def _worker(rank: int, init: str, device: str) -> None:
    import torch
    import torch.distributed as dist

    import vram_residency.distributed as vrd

    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    try:
        on_gpu = device == "cuda"
        place = {"tp": 0, "dp": rank}
        # Rank 0 is the trainer with new weights; rank 1 the engine holding older ones.
        weights = _weights(torch, device, seed=1 if rank == 0 else 2)
        manager = vr.Manager(f"worker-{rank}", algorithm="blake3") if on_gpu and rank == 1 else None
        sealed = manager.seal(weights, model_id="policy") if manager is not None else None
        old = sealed.digest if sealed is not None else None

        # 1. A good broadcast: the engine re-seals on exactly the sent bytes.
        arrival = vrd.broadcast_verified(
            weights, src=0, algorithm="blake3", manager=manager, sealed=sealed, place=place
        )
        mine = vr.digest_tensors(weights, algorithm="blake3")
        assert mine == arrival.sent, "what arrived hashes as what was sent"
        if rank == 1 and manager is not None:
            assert arrival.sealed is not None and arrival.sealed.digest == mine[0] != old
            manager.verify(arrival.sealed)
            sealed = arrival.sealed

        # 2. Replicas agree; then one byte flipped on rank 1 is named, with its place.
        agree = vrd.compare_replicas(weights, place=place)
        assert agree.agree and agree.reference == mine[0]
        flipped = "layers.0.mlp.weight"
        if rank == 1:
            weights[flipped].view(torch.uint8).view(-1)[5] ^= 1
        split = vrd.compare_replicas(weights, place=place, expect=arrival.sent)
        assert split.odd == [1] and split.differences == [f"tp=0/dp=1/{flipped}"], split
        if rank == 1:
            weights[flipped].view(torch.uint8).view(-1)[5] ^= 1  # restored

        # 3. A byte flipped in transit on rank 1's side: refused, the tensor named.
        real = dist.broadcast
        if rank == 1:

            def corrupting(tensor: Any, *args: Any, **kwargs: Any) -> Any:
                work = real(tensor, *args, **kwargs)
                if tensor.data_ptr() == weights["norm.weight"].data_ptr():
                    tensor.view(torch.uint8).view(-1)[3] ^= 1
                return work

            dist.broadcast = corrupting
        try:
            if rank == 1:
                with pytest.raises(vr.IntegrityError) as refused:
                    vrd.broadcast_verified(
                        weights, src=0, manager=manager, sealed=sealed, place=place
                    )
                if manager is not None:
                    assert refused.value.kind == "UpdateRefused"
                    assert refused.value.tensor == "norm.weight"
                    assert not manager.is_stopped
                    with pytest.raises(vr.BadInput) as held:
                        manager.verify(sealed)  # type: ignore[arg-type]
                    assert held.value.kind == "ModelUpdating"
                else:
                    assert refused.value.kind == "ArrivalMismatch"
                    assert refused.value.tensor == "tp=0/dp=1/norm.weight"
            else:
                vrd.broadcast_verified(weights, src=0, place=place)
        finally:
            dist.broadcast = real

        # 4. Layouts that differ between ranks: refused on every rank before a byte moves.
        odd = dict(weights)
        if rank == 1:
            odd["extra"] = torch.zeros(4, device=device)
        with pytest.raises(vr.BadInput):
            vrd.broadcast_verified(odd, src=0, place=place)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_two(device: str, token: bytes) -> None:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        os.environ["VRAM_WORKER_TOKEN"] = token.decode()
        mp.spawn(_worker, args=(f"file://{d}/rendezvous", device), nprocs=2, join=True)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed: no torch.distributed to run over")
def test_two_processes_over_gloo_with_cpu_tensors(token_env: bytes) -> None:
    _run_two("cpu", token_env)


@pytest.mark.skipif(
    not (HAVE_TORCH and gpu_tests_enabled()),
    reason="CUDA tensors over gloo run with VRAM_TEST_GPU=1 on a machine with a GPU and PyTorch",
)
def test_two_processes_over_gloo_with_cuda_tensors_verified_and_resealed_on_arrival(
    token_env: bytes,
) -> None:
    _run_two("cuda", token_env)
