"""On a real GPU with PyTorch (`VRAM_TEST_GPU=1`; skipped, and reported as skipped, elsewhere):
tensors a `transformers` model holds are sealed where they lie, checked around generation,
and a weight changed through PyTorch is caught before the next request and, when changed
during a forward pass, by the check after it. `VRAMCTL` names a `vramctl` binary to compare
the model digest with `vramctl digest --tensors` of the same weights saved by `safetensors`."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import vram_residency as vr

from conftest import gpu_tests_enabled

pytestmark = pytest.mark.skipif(
    not gpu_tests_enabled(), reason="GPU tests run with VRAM_TEST_GPU=1 on a machine with a GPU"
)

torch: Any = pytest.importorskip("torch") if gpu_tests_enabled() else None


def tiny_model() -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(device="cuda", dtype=torch.bfloat16)
    return model.eval()


def generate(model: Any) -> Any:
    prompt = torch.tensor([[1, 5, 9, 13]], device="cuda")
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("algorithm", ["sha256-tree-65536", "blake3"])
def test_the_library_sees_the_bytes_pytorch_holds(token_env: bytes, algorithm: str) -> None:
    manager = vr.Manager("gpu-worker", algorithm=algorithm)
    t = torch.arange(1 << 20, dtype=torch.float32, device="cuda")
    sealed = manager.seal({"t": t}, model_id="one")
    want = vr.digest(t.cpu().numpy(), algorithm=algorithm)
    assert sealed.tensors["t"].digest == want == vr.digest(t, algorithm=algorithm)
    manager.verify(sealed)
    t[12345] += 1  # through PyTorch, on its stream
    with pytest.raises(vr.IntegrityError) as caught:
        manager.verify(sealed)
    assert caught.value.kind == "IntegrityViolation"


def test_inputs_pytorch_can_give_that_cannot_be_sealed(token_env: bytes) -> None:
    manager = vr.Manager("gpu-worker")
    w = torch.ones((64, 32), dtype=torch.bfloat16, device="cuda")
    for tensors, message in [
        ({"w": w.t()}, "not contiguous"),
        ({"w": w.cpu()}, "cpu device"),
        ({"w": torch.ones(4, dtype=torch.complex64, device="cuda")}, "model files do not name"),
    ]:
        with pytest.raises(vr.BadInput) as caught:
            manager.seal(tensors, model_id="m")
        assert message in str(caught.value)
    sealed = manager.seal({"w": w}, model_id="m")
    assert sealed.tensors["w"].dtype == "BF16"
    assert sealed.tensors["w"].digest == vr.digest(w)  # bf16: copied as bytes


def test_a_stream_handle_nothing_vouches_for_is_refused_not_synchronised(
    token_env: bytes,
) -> None:
    # A garbage handle in __cuda_array_interface__ crashed the process when synchronised.
    w = torch.ones((64, 32), dtype=torch.float32, device="cuda")

    class Interface:
        def __init__(self, stream: int) -> None:
            self.__cuda_array_interface__ = dict(w.__cuda_array_interface__, stream=stream)

    manager = vr.Manager("gpu-worker")
    for garbage in (0xDEADBEEF, 0):
        with pytest.raises(vr.BadInput, match="nothing vouches"):
            manager.seal({"w": Interface(garbage)}, model_id="m")
    # PyTorch's current stream (what a producer names) and the legacy default stream are taken.
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        sealed = manager.seal({"w": Interface(side.cuda_stream)}, model_id="m")
    manager.verify(sealed)
    manager.release(sealed)
    sealed = manager.seal({"w": Interface(1)}, model_id="m")
    manager.verify(sealed)


def test_a_jax_array_is_sealed_through_dlpack(token_env: bytes) -> None:
    jax: Any = pytest.importorskip("jax")
    jnp: Any = pytest.importorskip("jax.numpy")

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        pytest.skip("JAX sees no GPU")
    x = jax.device_put(jnp.arange(1 << 16, dtype=jnp.float32), gpus[0])
    manager = vr.Manager("gpu-worker")
    sealed = manager.seal({"x": x}, model_id="jax")
    assert sealed.tensors["x"].dtype == "F32"
    import numpy as np

    assert sealed.tensors["x"].digest == vr.digest(np.asarray(x))
    manager.verify(sealed)


def test_a_transformers_model_is_checked_around_generation(token_env: bytes) -> None:
    model = tiny_model()
    manager = vr.Manager("gpu-worker")
    sealed = manager.seal(model, model_id="tiny-llama")
    assert len(sealed) == len(model.state_dict())
    manager.verify(sealed)
    with manager.execute(sealed):
        first = generate(model)
    manager.verify(sealed)
    with manager.execute(sealed):
        second = generate(model)
    assert torch.equal(first, second)

    # A weight changed between requests: caught before the next one runs.
    name = "model.layers.1.mlp.down_proj.weight"
    with torch.no_grad():
        model.get_parameter(name).view(-1)[100] += 1
    ran = []
    with pytest.raises(vr.IntegrityError) as caught:
        with manager.execute(sealed):
            ran.append(generate(model))
    assert caught.value.kind == "IntegrityViolation"
    assert caught.value.shard_id == f"tiny-llama:{name}"
    assert ran == []


def test_a_weight_changed_during_a_forward_pass_is_caught_after_it(token_env: bytes) -> None:
    model = tiny_model()
    manager = vr.Manager("gpu-worker")
    sealed = manager.seal(model, model_id="tiny-llama")
    name = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(vr.IntegrityError) as caught:
        with manager.execute(sealed):
            generate(model)
            with torch.no_grad():  # queued on the same stream, after the forward pass
                model.get_parameter(name).view(-1)[7] *= -1
    assert caught.value.kind == "ModifiedDuringExecution"
    assert caught.value.shard_id == f"tiny-llama:{name}"
    assert manager.is_stopped


def test_the_model_digest_matches_vramctl_on_the_saved_weights(
    token_env: bytes, tmp_path: Path
) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = tiny_model()
    manager = vr.Manager("gpu-worker")
    sealed = manager.seal(model, model_id="tiny-llama")
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(path))
    vramctl = os.environ.get("VRAMCTL")
    if vramctl is None:
        pytest.skip("set VRAMCTL to a vramctl binary to compare with `vramctl digest --tensors`")
    out = subprocess.run(
        [vramctl, "digest", "--tensors", "--json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    report = json.loads(out.splitlines()[-1])
    assert report["model_digest"] == sealed.digest
    for t in report["tensors"]:
        assert sealed.tensors[t["name"]].digest == t["digest"]
    # Sealed against the file's digest: the same model is accepted.
    manager.release(sealed)
    assert manager.seal(model, model_id="tiny-llama", expect=report["model_digest"]).digest == (
        sealed.digest
    )


@pytest.mark.parametrize("algorithm", ["sha256-tree-65536", "blake3"])
def test_gpu_digests_equal_vramctl_on_the_saved_weights_and_the_blake3_package(
    tmp_path: Path, algorithm: str
) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    vramctl = os.environ.get("VRAMCTL")
    if vramctl is None:
        pytest.skip("set VRAMCTL to a vramctl binary to compare with `vramctl digest --tensors`")
    weights = {n: t.detach() for n, t in tiny_model().state_dict().items()}
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(weights, str(path))
    on_gpu, each = vr.digest_tensors(weights, algorithm=algorithm)
    out = subprocess.run(
        [vramctl, "digest", "--tensors", "--algorithm", algorithm, "--json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    report = json.loads(out.splitlines()[-1])
    assert report["model_digest"] == on_gpu
    assert {t["name"]: t["digest"] for t in report["tensors"]} == each
    if algorithm == "blake3":
        blake3: Any = pytest.importorskip("blake3")
        for name, t in weights.items():
            host = t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes()
            assert each[name] == "blake3:" + blake3.blake3(host).hexdigest(), name


def test_hooks_check_every_generate_step_and_flag_a_changed_weight(token_env: bytes) -> None:
    from vram_residency.torch import guard

    model = tiny_model()
    manager = vr.Manager("gpu-worker", algorithm="blake3")
    sealed = manager.seal(model, model_id="tiny-llama")
    scrubber = manager.start_scrubber(mode="step")
    hooks = guard(model, manager, sealed, scrubber=scrubber)
    first = generate(model)
    assert hooks.forwards == hooks.checked >= 4  # one forward per generated token
    assert torch.equal(first, generate(model))

    # Changed between two steps (between requests here): the next step refuses to run.
    name = "model.layers.1.mlp.up_proj.weight"
    with torch.no_grad():
        model.get_parameter(name).view(-1)[3] += 1
    with pytest.raises(vr.IntegrityError) as caught:
        generate(model)
    assert caught.value.kind == "IntegrityViolation"
    assert caught.value.shard_id == f"tiny-llama:{name}"
    hooks.remove()


def test_a_weight_changed_during_a_step_is_caught_after_it(token_env: bytes) -> None:
    from vram_residency.torch import guard

    model = tiny_model()
    manager = vr.Manager("gpu-worker")
    sealed = manager.seal(model, model_id="tiny-llama")
    hooks = guard(model, manager, sealed, mode="pipelined")
    name = "model.layers.0.self_attn.q_proj.weight"
    weight = model.get_parameter(name)
    steps: list[int] = []

    def change_during_the_third_step(_module: Any, _args: Any) -> None:
        steps.append(1)
        if len(steps) == 3:
            with torch.no_grad():  # queued on the forward's stream, inside the step
                weight.view(-1)[11] *= -1

    inner = model.model.layers[1].register_forward_pre_hook(change_during_the_third_step)
    with pytest.raises(vr.IntegrityError) as caught:
        generate(model)  # its output never returns: the third step raised
    assert caught.value.kind == "ModifiedDuringExecution"
    assert caught.value.shard_id == f"tiny-llama:{name}"
    assert manager.is_stopped
    inner.remove()
    hooks.remove()


def test_windows_are_ordered_on_the_stream_the_block_runs_on(token_env: bytes) -> None:
    manager = vr.Manager("gpu-worker", algorithm="blake3")
    w = torch.randn(1 << 20, device="cuda")
    sealed = manager.seal({"w": w}, model_id="m")
    side = torch.cuda.Stream()
    for mode in ("before", "before_and_after", "pipelined"):
        with torch.cuda.stream(side):
            with manager.execute(sealed, mode=mode) as window:
                torch.cuda._sleep(20_000_000)  # the block's work is still queued at __exit__
                assert window.mode == mode
    # A write queued on the side stream before the window is seen by the check before.
    with torch.cuda.stream(side):
        torch.cuda._sleep(20_000_000)
        w[5] += 1
        with pytest.raises(vr.IntegrityError) as caught:
            with manager.execute(sealed, mode="before"):
                pass
    assert caught.value.kind == "IntegrityViolation"
    with pytest.raises(vr.BadInput, match="raw handle"):
        manager.execute(sealed, stream=side.cuda_stream)


def test_a_forward_captured_into_a_cuda_graph_is_refused(token_env: bytes) -> None:
    from vram_residency.torch import guard

    layer = torch.nn.Linear(256, 256, device="cuda")
    manager = vr.Manager("gpu-worker", algorithm="blake3")
    sealed = manager.seal(layer, model_id="linear")
    hooks = guard(layer, manager, sealed)
    x = torch.randn(8, 256, device="cuda")
    layer(x)  # an ordinary forward is checked
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        with pytest.raises(vr.BadInput, match="CUDA graph"):
            with torch.cuda.graph(graph):
                layer(x)
    hooks.remove()


def test_the_step_scrubber_finds_a_flip_while_generation_runs(token_env: bytes) -> None:
    from vram_residency.torch import guard

    model = tiny_model()
    for algorithm in ("blake3", "sha256-tree-65536"):
        manager = vr.Manager("gpu-worker", algorithm=algorithm)
        sealed = manager.seal(model, model_id="tiny-llama")
        scrubber = manager.start_scrubber(mode="step", budget=1.0)
        hooks = guard(model, manager, sealed, mode=None, scrubber=scrubber)
        for _ in range(3):
            generate(model)
        assert scrubber.verified >= len(sealed), algorithm
        name = "model.norm.weight"
        with torch.no_grad():
            model.get_parameter(name).view(torch.int16).view(-1)[0] ^= 1
        with pytest.raises(vr.IntegrityError) as caught:
            for _ in range(10):
                generate(model)
        assert caught.value.shard_id == f"tiny-llama:{name}", algorithm
        hooks.remove()
        with torch.no_grad():
            model.get_parameter(name).view(torch.int16).view(-1)[0] ^= 1
        with pytest.raises(vr.IntegrityError):
            scrubber.stop()


@pytest.mark.parametrize("algorithm", ["sha256-tree-65536", "blake3"])
def test_gpu_tensors_are_digested_where_they_lie_as_a_seal_and_the_host_see_them(
    token_env: bytes, algorithm: str
) -> None:
    model = tiny_model()
    on_gpu, each = vr.digest_tensors(model, algorithm=algorithm)
    on_host, host_each = vr.digest_tensors(
        {n: t.detach().cpu() for n, t in model.state_dict().items()}, algorithm=algorithm
    )
    assert on_gpu == on_host
    assert each == host_each
    manager = vr.Manager("gpu-worker", algorithm=algorithm)
    sealed = manager.seal(model, model_id="tiny-llama")
    assert sealed.digest == on_gpu
    for name, d in each.items():
        assert sealed.tensors[name].digest == d
    # One flipped byte in one tensor changes that tensor's digest and the model's.
    w = model.state_dict()["model.layers.1.mlp.up_proj.weight"]
    w.view(torch.uint8)[77] ^= 1
    flipped, flipped_each = vr.digest_tensors(model, algorithm=algorithm)
    assert flipped != on_gpu
    assert [n for n in each if each[n] != flipped_each[n]] == ["model.layers.1.mlp.up_proj.weight"]


@pytest.mark.parametrize("algorithm", ["sha256-tree-65536", "blake3"])
def test_many_tensors_are_digested_in_two_launch_sequences_as_their_bytes_say(algorithm: str) -> None:
    # 100 tensors; the 61st is large enough (256 MiB) that the first 61 are queued on the GPU
    # while the other 39 are taken, all after work still queued on the stream.
    sizes = [1000 + 37 * i for i in range(100)]
    sizes[60] = 128 << 20
    tensors = {f"t.{i:03}": torch.empty(n, dtype=torch.bfloat16, device="cuda") for i, n in enumerate(sizes)}
    torch.manual_seed(3)
    torch.cuda._sleep(20_000_000)
    for t in tensors.values():
        t.normal_()
    on_gpu, each = vr.digest_tensors(tensors, algorithm=algorithm)
    on_host, host_each = vr.digest_tensors({n: t.cpu() for n, t in tensors.items()}, algorithm=algorithm)
    assert (on_gpu, each) == (on_host, host_each)
    assert len(each) == 100


def test_a_digest_is_ordered_after_the_work_on_the_tensors_stream() -> None:
    side = torch.cuda.Stream()
    n = 64 << 20
    with torch.cuda.stream(side):
        x = torch.zeros(n, dtype=torch.uint8, device="cuda")
        torch.cuda._sleep(50_000_000)  # the fill starts long after the digest is asked for
        x.fill_(7)
        got = vr.digest(x, algorithm="blake3")
    side.synchronize()
    assert got == vr.digest(bytes([7]) * n, algorithm="blake3")


def test_a_refit_and_a_sleep_and_wake_are_sealed_again_only_as_sent(token_env: bytes) -> None:
    model = tiny_model()
    manager = vr.Manager("gpu-worker", algorithm="blake3")
    sealed = manager.seal(model, model_id="tiny-llama")
    # A refit written in place, checked against the sender's digests (computed where they lie),
    # while another thread keeps opening windows on the model: none is served on weights being
    # rewritten, and none fails because of it.
    rewriting, done = threading.Event(), threading.Event()
    outcomes: dict[str, int] = {}

    def windows() -> None:
        while not done.is_set():
            during = rewriting.is_set()
            try:
                with manager.execute(sealed):
                    pass
                outcome = "SERVED WHILE REWRITTEN" if during else "served"
            except vr.VramResidencyError as e:
                # Refused because updating, or superseded by the update; anything else fails.
                outcome = {"ModelUpdating": "refused: updating", "NotSealed": "refused: superseded"}.get(
                    e.kind, f"FAILED: {e!r}"
                )
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    racer = threading.Thread(target=windows)
    racer.start()
    time.sleep(0.05)
    manager.begin_update(sealed)
    rewriting.set()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight.add_(1)
            torch.cuda.synchronize()
            time.sleep(0.01)
    sent = vr.digest_tensors(model, algorithm="blake3")
    refit = manager.update(sealed, expect=sent)
    rewriting.clear()
    done.set()
    racer.join()
    assert not [o for o in outcomes if o.isupper() or o.startswith("FAILED")], outcomes
    assert outcomes.get("refused: updating", 0) > 0 and outcomes.get("served", 0) > 0, outcomes
    assert not manager.is_stopped
    assert refit.digest == sent[0] != sealed.digest
    manager.verify(refit)
    # Sleep: offloaded, storage freed; wake: new storage, checked against the kept digest.
    kept = refit.digest
    manager.begin_update(refit)
    offloaded = {n: t.detach().cpu().clone() for n, t in model.state_dict().items()}
    for t in model.state_dict().values():
        t.untyped_storage().resize_(0)
    woken = {n: c.cuda() for n, c in offloaded.items()}
    awake = manager.update(refit, woken, expect=kept)
    assert awake.digest == kept
    manager.verify(awake)
    # One flipped byte in the offloaded copy: refused, the tensor named, nothing stopped.
    manager.begin_update(awake)
    offloaded["model.norm.weight"].view(torch.uint8)[3] ^= 1
    bad = {n: c.cuda() for n, c in offloaded.items()}
    with pytest.raises(vr.IntegrityError) as refused:
        manager.update(awake, bad, expect=kept)
    assert refused.value.kind == "UpdateRefused"
    assert refused.value.tensor == "model.norm.weight"
    assert not manager.is_stopped


def _attach(received: Any, results: Any) -> None:
    """The attaching engine (a second process): seals the owner's tensors where they lie, in
    the owner's memory mapped through CUDA IPC, only as the owner's digest says."""
    try:
        for tensors, owner_digest in iter(received.get, None):
            manager = vr.Manager("attaching-engine", algorithm="blake3")
            try:
                sealed = manager.seal(tensors, model_id="shared", expect=owner_digest)
                manager.verify(sealed)
                results.put(("sealed", sealed.digest))
                manager.release(sealed)
            except vr.IntegrityError as e:
                results.put(("refused", e.kind))
            del tensors
    except BaseException as e:  # reported to the test, which fails on it
        results.put(("error", repr(e)))


def test_an_engine_attaching_to_weights_another_process_holds_seals_them_as_the_owner_says(
    token_env: bytes,
) -> None:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    received, results = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_attach, args=(received, results))
    child.start()
    try:
        # The owner (a weight-cache daemon, say) holds the weights and publishes their digest.
        model = tiny_model()
        weights = {n: t.detach() for n, t in model.state_dict().items()}
        owner = vr.digest_tensors(weights, algorithm="blake3")
        received.put((weights, owner[0]))  # CUDA IPC handles, no copy
        assert results.get(timeout=60) == ("sealed", owner[0])
        # A byte changed after the digest was published: the attaching engine refuses to seal.
        weights["model.norm.weight"].view(torch.uint8)[1] ^= 1
        torch.cuda.synchronize()
        received.put((weights, owner[0]))
        assert results.get(timeout=60) == ("refused", "UnexpectedDigest")
        received.put(None)
        child.join(timeout=60)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
