"""Makes this directory's fixture with the real OpenSSF `model-signing` package (1.1.1, from
the Python package registry; key-based signing needs no network):

    pip install model-signing==1.1.1 pyopenssl && python make.py

`model/` is a tiny model; `model.blake3.sig` and `model.sha256.sig` are the Sigstore bundles
`model_signing` writes for it with BLAKE3 and SHA-256 file digests, signed with `key.pem` (a
throwaway P-256 key, kept so that `model_signing verify` can be run on them: `pub.pem`)."""

import pathlib
import subprocess

import model_signing

here = pathlib.Path(__file__).resolve().parent
model = here / "model"
model.mkdir(exist_ok=True)
(model / "weights.bin").write_bytes(bytes(i % 251 for i in range(4103)))
(model / "config.json").write_text('{"hidden_size": 8}\n')
key, pub = here / "key.pem", here / "pub.pem"
if not key.exists():
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key], check=True)
    subprocess.run(["openssl", "ec", "-in", key, "-pubout", "-out", pub], check=True)
for algorithm in ("blake3", "sha256"):
    hashing = model_signing.hashing.Config().use_file_serialization(hashing_algorithm=algorithm)
    bundle = here / f"model.{algorithm}.sig"
    model_signing.signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(
        hashing
    ).sign(model, bundle)
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).set_hashing_config(
        hashing
    ).verify(model, bundle)
    print("signed and verified", bundle.name)
