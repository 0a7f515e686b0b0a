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

# Certificate-based signing (`model_signing sign certificate`): a throwaway CA (`ca.pem`) signs a
# leaf certificate for a P-256 key (digitalSignature usage); the bundle carries the leaf and the
# chain. `other-ca.pem` is an unrelated CA, which must not verify it.
def openssl(*args):
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

cert_key, leaf_csr, leaf = here / "leaf-key.pem", here / "leaf.csr", here / "leaf.pem"
for name in ("ca", "other-ca"):
    if not (here / f"{name}.pem").exists():
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", here / f"{name}-key.pem")
        openssl("req", "-x509", "-new", "-key", here / f"{name}-key.pem", "-subj", f"/CN=vram-residency test {name}",
                "-days", "36500", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", here / f"{name}.pem")
openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", cert_key)
openssl("req", "-new", "-key", cert_key, "-subj", "/CN=model signer", "-out", leaf_csr)
ext = here / "leaf.ext"
ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n")
openssl("x509", "-req", "-in", leaf_csr, "-CA", here / "ca.pem", "-CAkey", here / "ca-key.pem",
        "-CAcreateserial", "-days", "36500", "-extfile", ext, "-out", leaf)
hashing = model_signing.hashing.Config().use_file_serialization(hashing_algorithm="sha256")
bundle = here / "model.cert.sig"
model_signing.signing.Config().use_certificate_signer(
    private_key=cert_key, signing_certificate=leaf, certificate_chain=[here / "ca.pem"]
).set_hashing_config(hashing).sign(model, bundle)
model_signing.verifying.Config().use_certificate_verifier(
    certificate_chain=[here / "ca.pem"]
).set_hashing_config(hashing).verify(model, bundle)
print("signed and verified", bundle.name)
for f in (cert_key, leaf_csr, ext, here / "ca.srl", here / "ca-key.pem", here / "other-ca-key.pem", leaf):
    f.unlink(missing_ok=True)
