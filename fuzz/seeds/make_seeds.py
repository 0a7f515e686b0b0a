#!/usr/bin/env python3
"""Writes the committed seed corpus of each fuzz target from the project's own vectors and
fixtures, so that every target starts past magic bytes and length fields.

Run from the repository root: python3 fuzz/seeds/make_seeds.py. `cargo xtask fuzz` reads
fuzz/seeds/<target>/ beside the (ignored) working corpus fuzz/corpus/<target>/. Seeds of the
targets that take structured input (seal_verify, key_derivation, digest_stream) are a few
inputs kept from a minimised run, not written here.
"""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = ROOT / "fuzz" / "seeds"


def put(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def vector_lines(path, prefix):
    return [l[len(prefix):] for l in (ROOT / path).read_text().splitlines() if l.startswith(prefix)]


for i, enc in enumerate(vector_lines("crates/vram-seal/tests/data/seal_vectors.txt", "encoding ")):
    put("seal_decode", f"vector-{i}", bytes.fromhex(enc))
for i, enc in enumerate(vector_lines("crates/vram-seal/tests/data/group_vectors.txt", "encoding ")):
    put("group_seal", f"vector-{i}", bytes.fromhex(enc))
for i, line in enumerate((ROOT / "crates/vram-policy/tests/data/attestation_vectors.txt").read_text().split()):
    try:
        data = bytes.fromhex(line)
    except ValueError:
        continue
    if data[:1] == b"\x01":
        put("attestation", f"vector-{i}", data)

# The audit verifier: the reference log of .specs/audit.md and each of its prefixes.
log = vector_lines("crates/vram-alloc/tests/data/audit_vectors.txt", "line ")
for n in range(1, len(log) + 1):
    put("audit_log", f"reference-{n}", "".join(l + "\n" for l in log[:n]))

# Model headers: (extension selector u8, extra length u16 little-endian, file bytes).
models = ROOT / "crates/vramctl/tests/data/models"
for f in sorted(models.iterdir()):
    selector = {".safetensors": 0, ".gguf": 1}.get(f.suffix)
    if selector is not None:
        put("model_header", f.stem + f.suffix.replace(".", "-"), bytes([selector, 0, 0]) + f.read_bytes())

tree = "sha256-tree-65536:2d4c4b2d34a7d3711a5b36433106a88f2000c10b13a979e2bc503c4479fc3de4"
flat = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
for i, text in enumerate([
    f"{tree}  model.safetensors",
    f"{flat}  model-00001-of-00002.safetensors",
    f"{flat} *binary.bin",
    f"\\{flat}  back\\\\slash\\nnewline",
    f"SHA256:{flat.upper()}",
    "sha256-tree-1048576",
    tree,
]):
    put("digest_text", f"line-{i}", text)

for i, text in enumerate(["llama-3-8b.0", "shards_model-00001-of-00002.safetensors", "a@b+c:d",
                          "evil\nid", "\x1b[31mred", "x" * 300]):
    put("shard_id", f"id-{i}", text)
