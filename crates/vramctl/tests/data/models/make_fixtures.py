#!/usr/bin/env python3
"""Writes the model-file fixtures of vramctl's tests with the official writers.

    pip install gguf==0.19.0 safetensors numpy
    python3 make_fixtures.py

Valid files: `tiny.gguf` (F32, F16 and Q8_0 tensors, written by gguf-py's GGUFWriter),
`vocab-only.gguf` (metadata and no tensor, like llama.cpp's ggml-vocab-*.gguf) and
`tiny.safetensors` (the safetensors library). Broken variants, each refused by gguf-py's
GGUFReader: truncated in the data section, cut right after the header, a tensor type patched
to 99, a tensor offset patched to 10^12. `lfs-pointer.gguf` is a Git LFS pointer file.
"""
import struct
import numpy as np
import gguf
from safetensors.numpy import save_file

def tiny():
    w = gguf.GGUFWriter("tiny.gguf", "llama")
    w.add_name("tiny")
    w.add_tensor("tok_embd.weight", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("norm.weight", np.ones(32, dtype=np.float16))
    q8 = gguf.quants.quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("out.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

def vocab_only():
    w = gguf.GGUFWriter("vocab-only.gguf", "llama")
    w.add_name("vocab")
    w.add_tokenizer_model("llama")
    w.add_token_list(["<s>", "</s>", "a", "b"])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    # llama.cpp's vocab files end right after their metadata: no padding to the alignment.
    r = gguf.GGUFReader("vocab-only.gguf")
    end = max(f.offset + sum(len(p.tobytes()) for p in f.parts) for f in r.fields.values())
    data = open("vocab-only.gguf", "rb").read()
    open("vocab-only-unpadded.gguf", "wb").write(data[:end])
    assert len(gguf.GGUFReader("vocab-only-unpadded.gguf").fields) == len(r.fields)


def broken():
    data = open("tiny.gguf", "rb").read()
    r = gguf.GGUFReader("tiny.gguf")
    open("truncated.gguf", "wb").write(data[:-40])
    open("header-only.gguf", "wb").write(data[:r.data_offset])
    first = r.tensors[0]
    # The type field is the u32 right before the u64 offset that ends the tensor's info.
    info_end = first.field.offset + sum(len(p.tobytes()) for p in first.field.parts)
    type_at, offset_at = info_end - 12, info_end - 8
    patched = bytearray(data); patched[type_at:type_at + 4] = struct.pack("<I", 99)
    open("bad-type.gguf", "wb").write(patched)
    patched = bytearray(data); patched[offset_at:offset_at + 8] = struct.pack("<Q", 10**12)
    open("bad-offset.gguf", "wb").write(patched)
    for name in ["truncated.gguf", "header-only.gguf", "bad-type.gguf", "bad-offset.gguf"]:
        try:
            rr = gguf.GGUFReader(name)
            [t.data for t in rr.tensors]
            raise SystemExit(f"gguf-py accepted {name}")
        except SystemExit:
            raise
        except Exception:
            pass

tiny(); vocab_only(); broken()
save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, dtype=np.float16)}, "tiny.safetensors")
open("lfs-pointer.gguf", "w").write(
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 253115584\n")
