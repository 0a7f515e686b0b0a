#!/usr/bin/env python3
"""Checks and times the digest kernels on a GPU machine (CuPy), independently of the Rust code.

    python3 crates/vram-cuda-sys/kernels/check_kernels.py [--small] [--ncu] [--ranges] [--ptx-dir DIR]

Loads sha256_tree.ptx, compares every leaf digest with hashlib and every root with the Python
reference of .specs/digest.md (sliced launches included), then prints GB/s of the leaf kernel
at several shard and leaf sizes. --small runs only the correctness part (for compute-sanitizer);
--ncu runs one 1 GiB launch at 64 KiB leaves (for Nsight Compute). --ranges checks the
many-range kernels (a model's tensors in one launch) and times 300 ranges against one shard.
"""
import hashlib, os, struct, sys, time

import cupy as cp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", ".specs", "reference"))
from vectors import tree_digest  # noqa: E402

args = sys.argv[1:]
ptx_dir = args[args.index("--ptx-dir") + 1] if "--ptx-dir" in args else HERE
mod = cp.RawModule(path=os.path.join(ptx_dir, "sha256_tree.ptx"))
leaves_k = mod.get_function("sha256_leaves")
fold_k = mod.get_function("sha256_fold_level")
range_leaves_k = mod.get_function("sha256_range_leaves")
range_fold_k = mod.get_function("sha256_range_fold_level")
SMS = cp.cuda.Device().attributes["MultiProcessorCount"]


def block_for(n):
    # Few leaves: small blocks, so the leaves spread over every SM instead of filling a few.
    return max(32, min(128, (n // SMS) // 32 * 32))


def leaf_states(buf, n, leaf, state, slice_len=None, first=0, count=None, block=None):
    nleaves = max(1, -(-n // leaf))
    count = nleaves - first if count is None else count
    block = block or block_for(count)
    grid = -(-count // block)
    slice_len = slice_len or leaf
    for begin in range(0, leaf, slice_len):
        leaves_k((grid,), (block,), (buf, cp.uint64(n), cp.uint64(leaf), cp.uint64(first),
                                     cp.uint64(count), cp.uint64(begin), cp.uint64(slice_len), state))
    return nleaves


def fold(state, nleaves):
    a, b = state, cp.empty(max(8, ((nleaves + 1) // 2) * 8), dtype=cp.uint32)
    n = nleaves
    while n > 1:
        out = (n + 1) // 2
        fold_k((-(-out // 128),), (128,), (a, b, cp.uint64(n)))
        a, b, n = b, a, out
    return a[:8]


def words_to_bytes(words):
    return b"".join(struct.pack(">I", int(w)) for w in words)


def gpu_digest(data, leaf, slice_len=None):
    n = len(data)
    buf = cp.asarray(np.frombuffer(data, dtype=np.uint8)) if n else cp.zeros(1, dtype=cp.uint8)
    nleaves = max(1, -(-n // leaf))
    state = cp.full(nleaves * 8, 0xDEADBEEF, dtype=cp.uint32)  # poisoned
    leaf_states(buf, n, leaf, state, slice_len)
    host = cp.asnumpy(state)
    for i in range(nleaves):
        got = words_to_bytes(host[i * 8:(i + 1) * 8])
        want = hashlib.sha256(data[i * leaf:(i + 1) * leaf]).digest()
        assert got == want, f"leaf {i} of n={n} leaf={leaf}"
    root = words_to_bytes(cp.asnumpy(fold(state, nleaves)))
    return hashlib.sha256(b"\x02" + struct.pack(">QQ", leaf, n) + root).hexdigest()


def correctness(leaf_sizes):
    rng = np.random.default_rng(7)
    cases = 0
    for leaf in leaf_sizes:
        sizes = {1, 63, 64, 65, 119, 120, leaf - 1, leaf, leaf + 1, 3 * leaf + 77, 5 * leaf, 7 * leaf - 9}
        if leaf == 4096:
            sizes |= {4096 * 33 + 56, 4096 * 2 + 55, 4096 * 100}
        for n in sorted(sizes):
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            want = tree_digest(data, leaf)
            assert gpu_digest(data, leaf) == want, (leaf, n)
            assert gpu_digest(data, leaf, slice_len=4096) == want, (leaf, n, "sliced")
            cases += 1
    print(f"correctness: {cases} shapes x (full, sliced) match hashlib and the reference")


def timed(fn, reps=3):
    best = 1e9
    for _ in range(reps):
        cp.cuda.Device().synchronize()
        t = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def throughput():
    free, total = cp.cuda.Device().mem_info
    big = min(16 << 30, (free - (2 << 30)) // (1 << 30) << 30)
    buf = cp.arange(big // 8, dtype=cp.uint64)
    buf *= cp.uint64(0x9E3779B97F4A7C15)
    buf = buf.view(cp.uint8)
    print(f"device {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, {SMS} SMs")
    print("| shard | leaf | leaves | block | kernel GB/s | fold ms |")
    for shard, leaf, block in [(big, 65536, None), (big, 262144, None), (big, 1 << 20, None),
                               (4 << 30, 1 << 20, None), (4 << 30, 1 << 20, 128),
                               (1 << 30, 65536, None), (256 << 20, 65536, None)]:
        n = max(1, shard // leaf)
        state = cp.empty(n * 8, dtype=cp.uint32)
        t = timed(lambda: leaf_states(buf, shard, leaf, state, block=block))
        tf = timed(lambda: fold(state, n))
        print(f"| {shard >> 20} MiB | {leaf >> 10} KiB | {n} | {block or block_for(n)} | {shard / t / 1e9:.0f} | {tf * 1e3:.2f} |")


def prefix(counts):
    offs = [0]
    for c in counts:
        offs.append(offs[-1] + c)
    return offs


def range_roots(bufs, lens, leaf, slice_len=None, block=128):
    """Every range's tree root (8 words each) from the range kernels, as the Rust side runs them."""
    counts = [max(1, -(-n // leaf)) for n in lens]
    offs = prefix(counts)
    ptrs = cp.asarray(np.array([b.data.ptr for b in bufs], dtype=np.uint64))
    lens_d = cp.asarray(np.array(lens, dtype=np.uint64))
    total = offs[-1]
    state = cp.full(total * 8, 0xDEADBEEF, dtype=cp.uint32)
    slice_len = slice_len or leaf
    for begin in range(0, leaf, slice_len):
        range_leaves_k((-(-total // block),), (block,),
                       (ptrs, lens_d, cp.asarray(np.array(offs, dtype=np.uint64)), cp.uint64(len(bufs)),
                        cp.uint64(leaf), cp.uint64(0), cp.uint64(total), cp.uint64(begin),
                        cp.uint64(slice_len), state))
    a, b = state, cp.empty(max(8, sum((c + 1) // 2 for c in counts) * 8), dtype=cp.uint32)
    while max(counts) > 1:
        nxt = [(c + 1) // 2 for c in counts]
        in_offs, out_offs = prefix(counts), prefix(nxt)
        n_out = out_offs[-1]
        range_fold_k((-(-n_out // 128),), (128,),
                     (a, b, cp.asarray(np.array(in_offs, dtype=np.uint64)),
                      cp.asarray(np.array(out_offs, dtype=np.uint64)), cp.uint64(len(bufs)), cp.uint64(n_out)))
        a, b, counts = b, a, nxt
    return a[: len(bufs) * 8]


def range_correctness():
    rng = np.random.default_rng(11)
    for leaf in (4096, 65536):
        lens = [0, 1, 63, 64, 65, leaf - 1, leaf, leaf + 1, 3 * leaf + 77, 5 * leaf, 17 * leaf - 9, 2, 100 * leaf]
        datas = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lens]
        bufs = [cp.asarray(np.frombuffer(d, dtype=np.uint8)) if d else cp.zeros(16, dtype=cp.uint8) for d in datas]
        for sl in (None, 4096):
            roots = cp.asnumpy(range_roots(bufs, lens, leaf, slice_len=sl))
            for i, d in enumerate(datas):
                root = words_to_bytes(roots[i * 8:(i + 1) * 8])
                got = hashlib.sha256(b"\x02" + struct.pack(">QQ", leaf, len(d)) + root).hexdigest()
                assert got == tree_digest(d, leaf), (leaf, i, len(d), sl)
    print("range correctness: 13 ranges x 2 leaf sizes x (full, sliced) match the reference")


def range_throughput():
    free, _ = cp.cuda.Device().mem_info
    total = min(14 << 30, (free - (4 << 30)) // 2 // (1 << 30) << 30)
    rng = np.random.default_rng(3)
    weights = rng.uniform(0.2, 1.8, 300)
    lens = [int(w / weights.sum() * total) // 256 * 256 for w in weights]
    bufs = [cp.ones(n, dtype=cp.uint8) for n in lens]
    one = cp.ones(sum(lens), dtype=cp.uint8)
    leaf = 65536
    n = -(-sum(lens) // leaf)
    state = cp.empty(n * 8, dtype=cp.uint32)
    t_one = timed(lambda: (leaf_states(one, sum(lens), leaf, state), fold(state, n)))
    t_many = timed(lambda: range_roots(bufs, lens, leaf))
    print(f"300 ranges, {sum(lens) / 2**30:.2f} GiB: {t_many * 1e3:.2f} ms; one shard of the same size: "
          f"{t_one * 1e3:.2f} ms; ratio {t_many / t_one:.3f}")


if "--ranges" in args:
    range_correctness()
    if "--small" not in args:
        range_throughput()
elif "--ncu" in args:
    buf = cp.zeros(1 << 30, dtype=cp.uint8)
    buf += 1
    state = cp.empty((1 << 14) * 8, dtype=cp.uint32)
    leaf_states(buf, 1 << 30, 65536, state)
    cp.cuda.Device().synchronize()
else:
    small = "--small" in args
    correctness((4096, 65536) if small else (4096, 65536, 1 << 20, 16 << 20))
    if not small:
        throughput()
