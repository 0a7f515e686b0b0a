#!/usr/bin/env python3
"""Independent reference implementation of .specs/digest.md, .specs/seal.md, .specs/group-seal.md, .specs/model-digest.md, .specs/attestation.md and .specs/audit.md (Python hashlib/hmac; Ed25519 from RFC 8032 section 6, in pure Python).

Prints the test vectors committed in crates/vram-seal/tests/data/. Run:
    python3 .specs/reference/vectors.py digest|seal|hkdf|attestation|group|model|audit
The Rust tests check the Rust implementation against these files, so the two implementations
must agree bit for bit.
"""
import datetime, hashlib, hmac, struct, sys

def pattern(n):
    return bytes(i % 251 for i in range(n))

def tree_digest(data, leaf):
    leaves = [hashlib.sha256(data[i:i + leaf]).digest() for i in range(0, len(data), leaf)] or [hashlib.sha256(b"").digest()]
    level = leaves
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return hashlib.sha256(b"\x02" + struct.pack(">QQ", leaf, len(data)) + level[0]).hexdigest()

def digest(data, alg):
    if alg == "sha256":
        return hashlib.sha256(data).hexdigest()
    if alg == "blake3":
        import blake3  # the reference implementation's Python binding (PyPI `blake3`)
        return blake3.blake3(data).hexdigest()
    return tree_digest(data, int(alg.rsplit("-", 1)[1]))

# (name, input description, bytes, algorithm)
DIGEST_CASES = [
    ("empty", "empty", b"", "sha256-tree-4096"),
    ("empty-flat", "empty", b"", "sha256"),
    ("abc", "abc", b"abc", "sha256-tree-65536"),
    ("abc-flat", "abc", b"abc", "sha256"),
    ("one-full-leaf", "pattern 4096", pattern(4096), "sha256-tree-4096"),
    ("two-leaves", "pattern 4097", pattern(4097), "sha256-tree-4096"),
    ("four-leaves", "pattern 12293", pattern(3 * 4096 + 5), "sha256-tree-4096"),
    ("five-leaves-odd", "pattern 20480", pattern(5 * 4096), "sha256-tree-4096"),
    ("seven-leaves", "pattern 28000", pattern(28000), "sha256-tree-4096"),
    ("mib-plus-one", "pattern 1048577", pattern(1048577), "sha256-tree-65536"),
    ("mib-plus-one-flat", "pattern 1048577", pattern(1048577), "sha256"),
    # BLAKE3 at every size that exercises its tree of 1 KiB chunks (the input is the official
    # test vectors' own: byte i is i % 251).
    ("blake3-empty", "empty", b"", "blake3"),
    ("blake3-one", "pattern 1", pattern(1), "blake3"),
    ("blake3-block", "pattern 64", pattern(64), "blake3"),
    ("blake3-chunk-less-one", "pattern 1023", pattern(1023), "blake3"),
    ("blake3-chunk", "pattern 1024", pattern(1024), "blake3"),
    ("blake3-chunk-plus-one", "pattern 1025", pattern(1025), "blake3"),
    ("blake3-two-chunks", "pattern 2048", pattern(2048), "blake3"),
    ("blake3-three-chunks-plus-one", "pattern 3073", pattern(3073), "blake3"),
    ("blake3-seven-chunks", "pattern 7168", pattern(7168), "blake3"),
    ("blake3-mib", "pattern 1048576", pattern(1048576), "blake3"),
    ("blake3-mib-plus-one", "pattern 1048577", pattern(1048577), "blake3"),
]

def seal_encoding(f):
    def s(x):
        b = x.encode()
        return struct.pack(">I", len(b)) + b
    def opt(v):
        return b"\x00" if v is None else b"\x01" + struct.pack(">Q", v)
    out = b"VRAMSEAL" + b"\x01" + s(f["shard_id"]) + struct.pack(">I", f["gpu_device"])
    out += struct.pack(">Q", f["vram_bytes"]) + s(f["digest_algorithm"]) + s(f["digest"])
    t = f["sealed_at"]
    out += b"\x00" if t is None else b"\x01" + struct.pack(">QI", t[0], t[1])
    return out + opt(f["shard_index"]) + opt(f["total_shards"])

SEAL_KEY = bytes(range(32))
SEAL_CASES = [
    ("timed", dict(shard_id="shard-0", gpu_device=0, vram_bytes=3, digest_algorithm="sha256-tree-65536",
                   digest=digest(b"abc", "sha256-tree-65536"), sealed_at=(1700000000, 123456789),
                   shard_index=None, total_shards=None)),
    ("untimed-tensor-parallel", dict(shard_id="llama-70b:tp@1", gpu_device=3, vram_bytes=1048577,
                   digest_algorithm="sha256-tree-65536", digest=digest(pattern(1048577), "sha256-tree-65536"),
                   sealed_at=None, shard_index=1, total_shards=4)),
    ("flat", dict(shard_id="m", gpu_device=1, vram_bytes=3, digest_algorithm="sha256",
                  digest=digest(b"abc", "sha256"), sealed_at=(0, 0), shard_index=0, total_shards=1)),
    ("blake3", dict(shard_id="model.safetensors", gpu_device=0, vram_bytes=1048577,
                    digest_algorithm="blake3", digest=digest(pattern(1048577), "blake3"),
                    sealed_at=(1700000000, 0), shard_index=None, total_shards=None)),
]

def hkdf(ikm, salt, info, n=32):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, t, i = b"", b"", 1
    while len(okm) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm += t; i += 1
    return okm[:n]

HKDF_SALT = b"vram-residency/seal-key/v1/salt"
HKDF_INFO_PREFIX = b"vram-residency/seal-key/v1/worker:"
HKDF_CASES = [
    (b"worker-token-0123456789abcdef", "worker-1"),
    (bytes(range(16)), "w"),
    (b"\xff" * 100, "gpu-node-17.rack-3"),
]

# --- Ed25519, RFC 8032 section 6 (reference code, not constant time: vectors only) ---
ED_P = 2**255 - 19
ED_L = 2**252 + 27742317777372353535851937790883648493
ED_D = -121665 * pow(121666, ED_P - 2, ED_P) % ED_P
ED_SQRT_M1 = pow(2, (ED_P - 1) // 4, ED_P)

def _ed_add(P, Q):
    A, B = (P[1] - P[0]) * (Q[1] - Q[0]) % ED_P, (P[1] + P[0]) * (Q[1] + Q[0]) % ED_P
    C, D = 2 * P[3] * Q[3] * ED_D % ED_P, 2 * P[2] * Q[2] % ED_P
    E, F, G, H = B - A, D - C, D + C, B + A
    return (E * F, G * H, F * G, E * H)

def _ed_mul(s, P):
    Q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            Q = _ed_add(Q, P)
        P = _ed_add(P, P)
        s >>= 1
    return Q

def _ed_recover_x(y, sign):
    x2 = (y * y - 1) * pow(ED_D * y * y + 1, ED_P - 2, ED_P)
    x = pow(x2, (ED_P + 3) // 8, ED_P)
    if (x * x - x2) % ED_P != 0:
        x = x * ED_SQRT_M1 % ED_P
    if (x & 1) != sign:
        x = ED_P - x
    return x

ED_GY = 4 * pow(5, ED_P - 2, ED_P) % ED_P
ED_G = (_ed_recover_x(ED_GY, 0), ED_GY, 1, _ed_recover_x(ED_GY, 0) * ED_GY % ED_P)

def _ed_compress(P):
    zinv = pow(P[2], ED_P - 2, ED_P)
    x, y = P[0] * zinv % ED_P, P[1] * zinv % ED_P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")

def _ed_expand(secret):
    h = hashlib.sha512(secret).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]

def ed25519_public(secret):
    a, _ = _ed_expand(secret)
    return _ed_compress(_ed_mul(a, ED_G))

def ed25519_sign(secret, msg):
    a, prefix = _ed_expand(secret)
    A = _ed_compress(_ed_mul(a, ED_G))
    r = int.from_bytes(hashlib.sha512(prefix + msg).digest(), "little") % ED_L
    R = _ed_compress(_ed_mul(r, ED_G))
    h = int.from_bytes(hashlib.sha512(R + A + msg).digest(), "little") % ED_L
    return R + int.to_bytes((r + h * a) % ED_L, 32, "little")

# --- .specs/audit.md ---
AUDIT_KEY_SALT = b"vram-residency/audit-key/v1/salt"
AUDIT_KEY_INFO = b"vram-residency/audit-key/v1"

def audit_seed(seal_key):
    return hkdf(seal_key, AUDIT_KEY_SALT, AUDIT_KEY_INFO)

def checkpoint_message(count, head):
    return b"vram-residency/audit-checkpoint/v1\n" + str(count).encode() + b"\n" + head.hex().encode() + b"\n"

def audit_log(seal_key, records):
    """Lines a writer produces: opening, checkpoint, the records (a checkpoint after each
    critical one), and the checkpoint of a clean close."""
    import json
    seed = audit_seed(seal_key)
    lines, prev = [], bytes(32)
    def put(text):
        nonlocal prev
        lines.append(text)
        prev = hashlib.sha256(text.encode()).digest()
    def head(event):
        return '{"seq":%d,"prev":"%s","event":"%s"' % (len(lines), prev.hex(), event)
    def checkpoint():
        sig = ed25519_sign(seed, checkpoint_message(len(lines), prev))
        put(head("AuditCheckpoint") + ',"signature":"%s"}' % sig.hex())
    put(head("AuditLogOpened") + ',"public_key":"%s","unsigned_records":0,"repaired_bytes":0}' % ed25519_public(seed).hex())
    checkpoint()
    for r in records:
        r = dict(timestamp_ms=r["timestamp_ms"], time=rfc3339_millis(r["timestamp_ms"]),
                 **{k: v for k, v in r.items() if k != "timestamp_ms"})
        body = json.dumps(r, separators=(",", ":"), ensure_ascii=False)
        put('{"seq":%d,"prev":"%s",%s' % (len(lines), prev.hex(), body[1:]))
        if r["severity"] == "critical":
            checkpoint()
    checkpoint()
    return lines

def rfc3339_millis(ms):
    """RFC 3339, UTC, milliseconds: the `time` of an audit record."""
    t = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)

AUDIT_KEYS = [bytes(range(32)), b"\x5e" * 32, bytes(range(64))]
AUDIT_CHECKPOINTS = [(1, bytes(32)), (2, hashlib.sha256(b"abc").digest()), (18446744073709551615, b"\xff" * 32)]
AUDIT_RECORDS = [
    dict(timestamp_ms=1700000000123, worker_id="worker-1", correlation_id="0a1b2c3d-00000001", severity="info",
         event="VramSealed", shard_id="llama-shard-0", gpu_device=0, vram_bytes=3, reserved_bytes=2097152,
         digest=digest(b"abc", "sha256-tree-65536"), digest_algorithm="sha256-tree-65536", backend="mock"),
    dict(timestamp_ms=1700000000456, worker_id="worker-1", correlation_id="0a1b2c3d-00000002", severity="info",
         event="SealVerified", shard_id="llama-shard-0", gpu_device=0),
    dict(timestamp_ms=1700000000789, worker_id="worker-1", correlation_id="0a1b2c3d-00000003", severity="critical",
         event="SealVerificationFailed", shard_id="llama-shard-0", gpu_device=0,
         reason="integrity violation on GPU 0: digest mismatch \u2014 \"edited\"\n"),
    dict(timestamp_ms=1700000001000, worker_id="worker-1", correlation_id="0a1b2c3d-00000001", severity="info",
         event="VramDeallocated", shard_id="llama-shard-0", gpu_device=0, freed_bytes=2097152, error=None),
]

def attestation_statement(a):
    """The canonical statement bytes of .specs/attestation.md (everything but the signature)."""
    def s(x):
        b = x.encode()
        return struct.pack(">I", len(b)) + b
    tf = lambda v: "true" if v else "false"
    ecc = "None" if a["ecc_enabled"] is None else f"Some({tf(a['ecc_enabled'])})"
    head = [a["worker_id"], a["shard_id"], str(a["gpu_device"]), str(a["vram_bytes"]), a["digest"],
            a["digest_algorithm"], a["backend"], tf(a["simulated"]), a["device_name"], ecc,
            a["memory_type"], tf(a["is_managed"]), str(a["device_ordinal"]), tf(a["covers_shard"]),
            str(len(a["checks_passed"]))]
    tail = [str(a["attested_at_ms"]), a["nonce"]]
    return bytes([a["version"]]) + b"".join(s(x) for x in head + a["checks_passed"] + tail)

def group_encoding(model_id, members):
    """The group seal encoding of .specs/group-seal.md; members are in index order."""
    def s(x):
        b = x.encode()
        return struct.pack(">I", len(b)) + b
    out = b"VRAMGRUP" + b"\x01" + s(model_id) + struct.pack(">Q", len(members))
    for i, (device, nbytes, alg, dig) in enumerate(members):
        out += struct.pack(">QIQ", i, device, nbytes) + s(alg) + s(dig)
    return out

GROUP_CASES = [
    ("one-shard", "llama-3-8b", [(0, 3, "sha256-tree-65536", digest(b"abc", "sha256-tree-65536"))]),
    ("three-shards", "llama-70b:tp@3", [
        (0, 1048577, "sha256-tree-65536", digest(pattern(1048577), "sha256-tree-65536")),
        (1, 3, "sha256", digest(b"abc", "sha256")),
        (7, 4097, "sha256-tree-4096", digest(pattern(4097), "sha256-tree-4096")),
    ]),
    ("blake3-shards", "llama-70b:tp@2", [
        (0, 1025, "blake3", digest(pattern(1025), "blake3")),
        (1, 3, "blake3", digest(b"abc", "blake3")),
    ]),
]

def model_encoding(tensors):
    """The model digest encoding of .specs/model-digest.md; tensors in any order, sorted by name
    bytes; tensors of zero bytes left out."""
    tensors = [t for t in tensors if t[3] > 0]
    def s(x):
        b = x.encode()
        return struct.pack(">I", len(b)) + b
    out = b"VRAMMODL" + b"\x01" + struct.pack(">Q", len(tensors))
    for name, dtype, shape, nbytes, alg, dig in sorted(tensors, key=lambda t: t[0].encode()):
        out += s(name) + s(dtype) + struct.pack(">I", len(shape))
        out += b"".join(struct.pack(">Q", d) for d in shape)
        out += struct.pack(">Q", nbytes) + s(alg) + s(dig)
    return out

def tensor(name, dtype, shape, data, alg):
    return (name, dtype, shape, len(data), alg, digest(data, alg))

MODEL_CASES = [
    ("one-tensor", [tensor("w", "F32", [2, 3], pattern(24), "sha256-tree-65536")]),
    ("three-tensors", [
        tensor("model.layers.0.mlp.up_proj.weight", "BF16", [4096, 1], pattern(8192), "sha256-tree-4096"),
        tensor("lm_head.weight", "Q4_K", [256, 2], pattern(288), "sha256"),
        tensor("\u00e9mbed", "F16", [], pattern(2), "sha256-tree-65536"),
    ]),
    ("blake3-tensors", [
        tensor("w", "BF16", [512, 2], pattern(2048), "blake3"),
        tensor("b", "F32", [3], pattern(12), "blake3"),
    ]),
    # A tensor of zero bytes is left out: the digest is one-tensor's.
    ("empty-tensor-left-out", [
        tensor("w", "F32", [2, 3], pattern(24), "sha256-tree-65536"),
        tensor("bias", "F32", [0, 4], b"", "sha256-tree-65536"),
    ]),
]

STATEMENT_DOMAIN = b"VRAM-STATEMENT\x00\x01"
ATTESTATION_CASES = [
    dict(version=1, worker_id="worker-1", shard_id="llama-3-8b.0", gpu_device=0, vram_bytes=1048577,
         digest=digest(pattern(1048577), "sha256-tree-65536"), digest_algorithm="sha256-tree-65536",
         backend="cuda", simulated=False, device_name="NVIDIA H100 80GB HBM3", ecc_enabled=True,
         memory_type="device", is_managed=False, device_ordinal=0, covers_shard=True,
         checks_passed=["seal signature", "digest of resident bytes",
                        "allocation is device memory, not managed",
                        "allocation on the expected device and covers the shard",
                        "device has its own memory and no pageable access"],
         attested_at_ms=1795300000123, nonce=b"nonce-from-the-scheduler".hex()),
    dict(version=1, worker_id="w", shard_id="m", gpu_device=1, vram_bytes=3,
         digest=digest(b"abc", "sha256"), digest_algorithm="sha256", backend="mock", simulated=True,
         device_name="Mock GPU 1", ecc_enabled=None, memory_type="simulated", is_managed=False,
         device_ordinal=1, covers_shard=True, checks_passed=[], attested_at_ms=0, nonce=""),
]

if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "digest":
        for name, desc, data, alg in DIGEST_CASES:
            print(f"{name} {desc.replace(' ', ':')} {alg} {digest(data, alg)}")
    elif what == "seal":
        for name, f in SEAL_CASES:
            enc = seal_encoding(f)
            t = f["sealed_at"]
            print("name", name)
            for k in ("shard_id", "gpu_device", "vram_bytes", "digest_algorithm", "digest"):
                print(k, f[k])
            print("sealed_at", "-" if t is None else f"{t[0]}.{t[1]:09d}")
            print("shard_index", "-" if f["shard_index"] is None else f["shard_index"])
            print("total_shards", "-" if f["total_shards"] is None else f["total_shards"])
            print("encoding", enc.hex())
            print("seal", hmac.new(SEAL_KEY, enc, hashlib.sha256).hexdigest())
            print()
    elif what == "hkdf":
        for token, wid in HKDF_CASES:
            print(token.hex(), wid, hkdf(token, HKDF_SALT, HKDF_INFO_PREFIX + wid.encode()).hex())
    elif what == "group":
        for name, model_id, members in GROUP_CASES:
            enc = group_encoding(model_id, members)
            print("name", name)
            print("model_id", model_id)
            for i, (device, nbytes, alg, dig) in enumerate(members):
                print("member", i, device, nbytes, alg, dig)
            print("encoding", enc.hex())
            print("seal", hmac.new(SEAL_KEY, enc, hashlib.sha256).hexdigest())
            print()
    elif what == "model":
        for name, tensors in MODEL_CASES:
            enc = model_encoding(tensors)
            print("name", name)
            for t_name, dtype, shape, nbytes, alg, dig in tensors:
                dims = ",".join(str(d) for d in shape) or "-"
                print("tensor", t_name, dtype, dims, nbytes, alg, dig)
            print("encoding", enc.hex())
            print("digest", hashlib.sha256(enc).hexdigest())
            print()
    elif what == "attestation":
        import json
        for a in ATTESTATION_CASES:
            st = attestation_statement(a)
            signed = dict(a, signature=hmac.new(SEAL_KEY, STATEMENT_DOMAIN + st, hashlib.sha256).hexdigest())
            print(st.hex(), json.dumps(signed, separators=(",", ":")))
    elif what == "audit":
        for key in AUDIT_KEYS:
            seed = audit_seed(key)
            print("key", key.hex(), seed.hex(), ed25519_public(seed).hex())
        seed = audit_seed(AUDIT_KEYS[0])
        for count, head in AUDIT_CHECKPOINTS:
            msg = checkpoint_message(count, head)
            print("checkpoint", count, head.hex(), msg.hex(), ed25519_sign(seed, msg).hex())
        for line in audit_log(AUDIT_KEYS[0], AUDIT_RECORDS):
            print("line", line)
    else:
        sys.exit("usage: vectors.py digest|seal|hkdf|attestation|group|model|audit")
