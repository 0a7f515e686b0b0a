//! The signature of a model-signing bundle (`model_signing sign key` and `model_signing sign
//! certificate`), checked before any digest it lists is trusted: ECDSA (P-256 with SHA-256,
//! P-384 with SHA-384, as `model_signing` signs) over the DSSE pre-authentication encoding of
//! the envelope's payload, by the operator's public key or by a certificate that chains to the
//! operator's root certificates.
//!
//! The chain is checked as `model_signing verify certificate` checks it: each certificate
//! signed by the next (ECDSA, SHA-256 or SHA-384), every issuer a CA, every certificate valid
//! at the time the signing certificate became valid, the signing certificate usable for
//! signatures (key usage `digitalSignature`, or extended key usage `codeSigning`), and the
//! chain ending at one of the roots given. Sigstore keyless bundles (a short-lived certificate
//! and a transparency-log entry, whose signer is an OIDC identity) are refused: checking them
//! needs the log's keys and an identity policy, which `model_signing verify sigstore` has.

use base64::Engine as _;
use serde::Deserialize;
use sha2::Digest as _;
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

/// Longest chain followed from the signing certificate to a root.
const MAX_CHAIN: usize = 8;
/// `ecdsa-with-SHA256` and `ecdsa-with-SHA384` (RFC 5758).
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
/// `id-kp-codeSigning` (RFC 5280).
const CODE_SIGNING: &str = "1.3.6.1.5.5.7.3.3";

/// What the signature is checked against.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The signer's public key (`model_signing sign key`).
    Key(SignerKey),
    /// Root certificates a signing certificate must chain to (`model_signing sign certificate`).
    Roots(Vec<Certificate>),
}

impl Trust {
    /// A public key from its PEM (`-----BEGIN PUBLIC KEY-----`, P-256 or P-384).
    ///
    /// # Errors
    /// [`SignatureError::Trust`] for anything else.
    pub fn key_from_pem(pem: &str) -> Result<Self, SignatureError> {
        use p256::pkcs8::DecodePublicKey as _;
        if let Ok(k) = p256::PublicKey::from_public_key_pem(pem) {
            return Ok(Self::Key(SignerKey::P256(k.into())));
        }
        if let Ok(k) = p384::PublicKey::from_public_key_pem(pem) {
            return Ok(Self::Key(SignerKey::P384(k.into())));
        }
        Err(SignatureError::Trust(
            "not a PEM public key on P-256 or P-384 (the curves model_signing signs with, P-521 aside)".to_owned(),
        ))
    }

    /// Root certificates from their PEM, one or more in a row.
    ///
    /// # Errors
    /// [`SignatureError::Trust`] when none can be read.
    pub fn roots_from_pem(pem: &str) -> Result<Self, SignatureError> {
        let roots = Certificate::load_pem_chain(pem.as_bytes())
            .map_err(|e| SignatureError::Trust(format!("root certificates: {e}")))?;
        if roots.is_empty() {
            return Err(SignatureError::Trust(
                "no certificate in the roots file".to_owned(),
            ));
        }
        Ok(Self::Roots(roots))
    }
}

/// An ECDSA public key of a curve `model_signing` signs with.
#[derive(Debug, Clone)]
pub enum SignerKey {
    /// P-256: messages hashed with SHA-256.
    P256(p256::ecdsa::VerifyingKey),
    /// P-384: messages hashed with SHA-384.
    P384(p384::ecdsa::VerifyingKey),
}

impl SignerKey {
    fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Option<Self> {
        use p256::pkcs8::DecodePublicKey as _;
        let der = spki.to_der().ok()?;
        if let Ok(k) = p256::PublicKey::from_public_key_der(&der) {
            return Some(Self::P256(k.into()));
        }
        p384::PublicKey::from_public_key_der(&der)
            .ok()
            .map(|k| Self::P384(k.into()))
    }

    /// Whether `der_signature` signs `message`, hashed as `model_signing` hashes for the curve
    /// (SHA-256 for P-256, SHA-384 for P-384).
    fn signs(&self, message: &[u8], der_signature: &[u8]) -> bool {
        use sha2::Digest as _;
        let prehash = match self {
            Self::P256(_) => sha2::Sha256::digest(message).to_vec(),
            Self::P384(_) => sha2::Sha384::digest(message).to_vec(),
        };
        self.signs_prehash(&prehash, der_signature)
    }

    /// Whether `der_signature` signs the digest `prehash` (a certificate's, whatever its hash).
    fn signs_prehash(&self, prehash: &[u8], der_signature: &[u8]) -> bool {
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        match self {
            Self::P256(k) => p256::ecdsa::DerSignature::try_from(der_signature)
                .is_ok_and(|s| k.verify_prehash(prehash, &s).is_ok()),
            Self::P384(k) => p384::ecdsa::DerSignature::try_from(der_signature)
                .is_ok_and(|s| k.verify_prehash(prehash, &s).is_ok()),
        }
    }
}

/// Who signed, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `key` or `certificate SUBJECT (issued by ROOT SUBJECT)`.
    pub signer: String,
}

/// Why a bundle's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The envelope carries no signature at all.
    #[error("the bundle carries no signature")]
    Unsigned,
    /// A Sigstore keyless bundle.
    #[error(
        "a Sigstore keyless bundle (a short-lived certificate and a transparency-log entry): its signer is an OIDC identity, checked by `model_signing verify sigstore --identity ... --identity_provider ...`, not here"
    )]
    Keyless,
    /// Signed with a certificate, checked against a key.
    #[error("signed with a certificate: give the root certificates it chains to")]
    NeedsRoots,
    /// Signed with a key, checked against roots.
    #[error("signed with a key, not a certificate: give the signer's public key")]
    NeedsKey,
    /// No signature verifies.
    #[error(
        "no signature verifies under {0}: the statement was changed after signing, or another key signed it"
    )]
    BadSignature(&'static str),
    /// The certificate chain does not hold.
    #[error("certificate chain: {0}")]
    Chain(String),
    /// The key or roots given cannot be used.
    #[error("{0}")]
    Trust(String),
    /// The bundle cannot be read.
    #[error("not a model-signing bundle: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct Bundle {
    #[serde(rename = "verificationMaterial", default)]
    material: Option<Material>,
    #[serde(rename = "dsseEnvelope")]
    envelope: Envelope,
}

#[derive(Deserialize)]
struct Material {
    #[serde(rename = "x509CertificateChain", default)]
    chain: Option<Chain>,
    #[serde(default)]
    certificate: Option<RawCertificate>,
    #[serde(rename = "tlogEntries", default)]
    tlog_entries: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Chain {
    #[serde(default)]
    certificates: Vec<RawCertificate>,
}

#[derive(Deserialize)]
struct RawCertificate {
    #[serde(rename = "rawBytes")]
    raw_bytes: String,
}

#[derive(Deserialize)]
struct Envelope {
    payload: String,
    #[serde(rename = "payloadType")]
    payload_type: String,
    #[serde(default)]
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

/// DSSE's pre-authentication encoding: the bytes a DSSE signature covers.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn base64(text: &str, what: &str) -> Result<Vec<u8>, SignatureError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| SignatureError::Malformed(format!("{what} is not base64 ({e})")))
}

/// Checks the signature of the bundle `bytes` against `trust`; the statement it signs is then
/// read by [`crate::signed_manifest::read_bundle`] from the same bytes.
///
/// # Errors
/// [`SignatureError`]: unsigned, keyless, the wrong kind of trust for the bundle, a signature
/// that does not verify, a chain that does not hold, an unreadable bundle.
pub fn verify_bundle(bytes: &[u8], trust: &Trust) -> Result<Verified, SignatureError> {
    let bundle: Bundle =
        serde_json::from_slice(bytes).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let envelope = &bundle.envelope;
    if envelope.signatures.is_empty() {
        return Err(SignatureError::Unsigned);
    }
    let material = bundle.material.as_ref();
    if material.is_some_and(|m| m.certificate.is_some() || !m.tlog_entries.is_empty()) {
        return Err(SignatureError::Keyless);
    }
    let chain = material
        .and_then(|m| m.chain.as_ref())
        .map(|c| {
            c.certificates
                .iter()
                .map(|r| base64(&r.raw_bytes, "a certificate"))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .filter(|c| !c.is_empty());
    let (key, signer) = match (trust, chain) {
        (Trust::Key(_), Some(_)) => return Err(SignatureError::NeedsRoots),
        (Trust::Roots(_), None) => return Err(SignatureError::NeedsKey),
        (Trust::Key(key), None) => (key.clone(), "the public key given".to_owned()),
        (Trust::Roots(roots), Some(chain)) => chained_key(&chain, roots)?,
    };
    let payload = base64(&envelope.payload, "the payload")?;
    let message = pae(&envelope.payload_type, &payload);
    let signed = envelope
        .signatures
        .iter()
        .any(|s| base64(&s.sig, "a signature").is_ok_and(|sig| key.signs(&message, &sig)));
    if !signed {
        return Err(SignatureError::BadSignature(match trust {
            Trust::Key(_) => "the public key given",
            Trust::Roots(_) => "the signing certificate",
        }));
    }
    Ok(Verified { signer })
}

/// The signing certificate's key (the first of `chain`, DER), once the chain holds to one of
/// `roots`, and who it is.
fn chained_key(
    chain: &[Vec<u8>],
    roots: &[Certificate],
) -> Result<(SignerKey, String), SignatureError> {
    let bad = |e: &dyn std::fmt::Display| SignatureError::Chain(e.to_string());
    let certificates = chain
        .iter()
        .map(|der| Certificate::from_der(der).map_err(|e| bad(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    let (leaf, intermediates) = certificates
        .split_first()
        .ok_or_else(|| bad(&"no certificate"))?;
    // As `model_signing verify certificate`: every certificate valid when the signing
    // certificate became valid.
    let at = leaf.tbs_certificate.validity.not_before.to_unix_duration();
    if !usable_for_signing(leaf) {
        return Err(bad(
            &"the signing certificate allows neither digitalSignature nor codeSigning",
        ));
    }
    let leaf_key = SignerKey::from_spki(&leaf.tbs_certificate.subject_public_key_info)
        .ok_or_else(|| bad(&"the signing certificate's key is not ECDSA P-256 or P-384"))?;
    let mut current = leaf;
    for _ in 0..MAX_CHAIN {
        valid_at(current, at)?;
        if let Some(root) = roots.iter().find(|r| *r == current || issued(current, r)) {
            valid_at(root, at)?;
            let signer = format!(
                "certificate {} (issued under root {})",
                leaf.tbs_certificate.subject, root.tbs_certificate.subject
            );
            return Ok((leaf_key, signer));
        }
        let next = intermediates
            .iter()
            .find(|c| issued(current, c))
            .ok_or_else(|| {
                bad(&format!(
                    "{} was not issued by any of the roots given, nor by a certificate of the bundle's chain",
                    current.tbs_certificate.subject
                ))
            })?;
        if !is_ca(next) {
            return Err(bad(&format!(
                "{} issued a certificate but is not a CA",
                next.tbs_certificate.subject
            )));
        }
        current = next;
    }
    Err(bad(&format!("longer than {MAX_CHAIN} certificates")))
}

/// Whether `issuer` signed `cert` (names match, ECDSA with SHA-256 or SHA-384 verifies).
fn issued(cert: &Certificate, issuer: &Certificate) -> bool {
    if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return false;
    }
    let Some(key) = SignerKey::from_spki(&issuer.tbs_certificate.subject_public_key_info) else {
        return false;
    };
    let Ok(tbs) = cert.tbs_certificate.to_der() else {
        return false;
    };
    let prehash = match cert.signature_algorithm.oid.to_string().as_str() {
        ECDSA_SHA256 => sha2::Sha256::digest(&tbs).to_vec(),
        ECDSA_SHA384 => sha2::Sha384::digest(&tbs).to_vec(),
        _ => return false,
    };
    cert.signature
        .as_bytes()
        .is_some_and(|sig| key.signs_prehash(&prehash, sig))
}

fn valid_at(cert: &Certificate, at: std::time::Duration) -> Result<(), SignatureError> {
    let validity = &cert.tbs_certificate.validity;
    if validity.not_before.to_unix_duration() <= at && at <= validity.not_after.to_unix_duration() {
        return Ok(());
    }
    Err(SignatureError::Chain(format!(
        "{} was not valid when the signing certificate became valid",
        cert.tbs_certificate.subject
    )))
}

/// An extension of `cert`, decoded.
fn extension<'a, T: x509_cert::der::Decode<'a> + x509_cert::der::oid::AssociatedOid>(
    cert: &'a Certificate,
) -> Option<T> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == T::OID)
        .and_then(|e| T::from_der(e.extn_value.as_bytes()).ok())
}

fn is_ca(cert: &Certificate) -> bool {
    extension::<BasicConstraints>(cert).is_some_and(|b| b.ca)
}

fn usable_for_signing(cert: &Certificate) -> bool {
    if extension::<KeyUsage>(cert).is_some_and(|k| k.digital_signature()) {
        return true;
    }
    extension::<ExtendedKeyUsage>(cert)
        .is_some_and(|eku| eku.0.iter().any(|oid| oid.to_string() == CODE_SIGNING))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

    use super::{SignatureError, Trust, verify_bundle};

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/model-signing")
                .join(name),
        )
        .unwrap()
    }

    fn trust_key() -> Trust {
        Trust::key_from_pem(std::str::from_utf8(&fixture("pub.pem")).unwrap()).unwrap()
    }

    fn trust_roots(name: &str) -> Trust {
        Trust::roots_from_pem(std::str::from_utf8(&fixture(name)).unwrap()).unwrap()
    }

    /// The bundle with its JSON edited by `edit`.
    fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(&fixture(name)).unwrap();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn bundles_model_signing_wrote_verify() {
        for name in ["model.blake3.sig", "model.sha256.sig"] {
            let v = verify_bundle(&fixture(name), &trust_key()).unwrap();
            assert_eq!(v.signer, "the public key given");
        }
        let v = verify_bundle(&fixture("model.cert.sig"), &trust_roots("ca.pem")).unwrap();
        assert!(v.signer.contains("CN=model signer"), "{}", v.signer);
    }

    #[test]
    fn a_forged_statement_an_unsigned_bundle_and_the_wrong_trust_are_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        // The statement edited (one digest changed), the signature kept.
        let forged = edited("model.blake3.sig", |v| {
            let payload = v["dsseEnvelope"]["payload"].as_str().unwrap();
            let mut text = String::from_utf8(b64.decode(payload).unwrap()).unwrap();
            let at = text.find("\"digest\"").unwrap() + 10;
            let c = text.as_bytes()[at];
            text.replace_range(at..=at, if c == b'0' { "1" } else { "0" });
            v["dsseEnvelope"]["payload"] = b64.encode(text).into();
        });
        assert!(matches!(
            verify_bundle(&forged, &trust_key()),
            Err(SignatureError::BadSignature(_))
        ));
        let unsigned = edited("model.blake3.sig", |v| {
            v["dsseEnvelope"]["signatures"] = serde_json::json!([]);
        });
        assert_eq!(
            verify_bundle(&unsigned, &trust_key()),
            Err(SignatureError::Unsigned)
        );
        let no_field = edited("model.blake3.sig", |v| {
            v["dsseEnvelope"]
                .as_object_mut()
                .unwrap()
                .remove("signatures");
        });
        assert_eq!(
            verify_bundle(&no_field, &trust_key()),
            Err(SignatureError::Unsigned)
        );
        // Another CA, the wrong kind of trust, a keyless bundle.
        assert!(matches!(
            verify_bundle(&fixture("model.cert.sig"), &trust_roots("other-ca.pem")),
            Err(SignatureError::Chain(_))
        ));
        assert_eq!(
            verify_bundle(&fixture("model.cert.sig"), &trust_key()),
            Err(SignatureError::NeedsRoots)
        );
        assert_eq!(
            verify_bundle(&fixture("model.blake3.sig"), &trust_roots("ca.pem")),
            Err(SignatureError::NeedsKey)
        );
        let keyless = edited("model.cert.sig", |v| {
            v["verificationMaterial"]["tlogEntries"] = serde_json::json!([{"logIndex": "1"}]);
        });
        assert_eq!(
            verify_bundle(&keyless, &trust_roots("ca.pem")),
            Err(SignatureError::Keyless)
        );
        // A certificate-signed bundle whose statement was edited.
        let forged_cert = edited("model.cert.sig", |v| {
            let payload = v["dsseEnvelope"]["payload"].as_str().unwrap().to_owned();
            let mut bytes = b64.decode(payload).unwrap();
            let last = bytes.len() - 2;
            bytes[last] ^= 0x20;
            v["dsseEnvelope"]["payload"] = b64.encode(bytes).into();
        });
        assert!(matches!(
            verify_bundle(&forged_cert, &trust_roots("ca.pem")),
            Err(SignatureError::BadSignature(_))
        ));
    }

    #[test]
    fn pae_is_dsse_v1() {
        // The DSSE specification's example.
        assert_eq!(
            super::pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }
}
