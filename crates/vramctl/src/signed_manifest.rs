//! The file digests of an OpenSSF model-signing manifest (`model_signing sign`, format
//! `https://model_signing/signature/v1.0`): a Sigstore bundle whose DSSE envelope carries an
//! in-toto statement, whose predicate lists every file of the model with its digest
//! (`resources`: name, algorithm, digest; BLAKE3 or SHA-256 of the whole file).
//!
//! Only the statement is read here; its signature is checked first, from the same bytes, by
//! [`crate::bundle_signature`]. `vramctl seal` then checks in VRAM that the bytes it seals are
//! the bytes that were signed.

use base64::Engine as _;
use serde::Deserialize;
use vram_residency::{DigestAlgorithm, ShardDigest};

/// The payload type of an in-toto statement in a DSSE envelope.
pub const IN_TOTO_PAYLOAD: &str = "application/vnd.in-toto+json";
/// The statement type model-signing writes.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of a model-signing manifest.
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// One file of the signed model and the digest it was signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedFile {
    /// Its path in the model's directory, as signed (`/`-separated, relative).
    pub name: String,
    /// The algorithm of `digest`.
    pub algorithm: DigestAlgorithm,
    /// The digest of the whole file.
    pub digest: ShardDigest,
}

/// Why a bundle's file digests could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedManifestError {
    /// Not a Sigstore bundle with a DSSE envelope.
    #[error("not a model-signing bundle (no dsseEnvelope with a payload): {0}")]
    NotABundle(String),
    /// The envelope carries something else than an in-toto statement.
    #[error("the envelope's payload is {0:?}, not an in-toto statement")]
    PayloadType(String),
    /// The payload is not base64 of a JSON statement.
    #[error("the statement cannot be read: {0}")]
    Statement(String),
    /// The statement is not a model-signing manifest.
    #[error("the statement is {0:?}, not a model-signing manifest ({PREDICATE_TYPE})")]
    PredicateType(String),
    /// Files hashed in shards (`model_signing ... --use_shard_serialization`) have no
    /// whole-file digest to check.
    #[error(
        "the model was signed with {0:?} serialization; sign it with file serialization (the default) so that each file has one digest"
    )]
    Serialization(String),
    /// A resource names an algorithm this library does not compute.
    #[error("{name:?} was signed with {algorithm:?}; only blake3 and sha256 can be checked")]
    Algorithm {
        /// The file.
        name: String,
        /// Its algorithm.
        algorithm: String,
    },
    /// A resource whose digest is not 64 hex characters, or a name that is absolute, holds
    /// `..` or is given twice.
    #[error("resource {name:?}: {problem}")]
    Resource {
        /// The file.
        name: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// No files at all.
    #[error("the manifest lists no files")]
    Empty,
}

#[derive(Deserialize)]
struct Bundle {
    #[serde(rename = "dsseEnvelope")]
    envelope: Envelope,
}

#[derive(Deserialize)]
struct Envelope {
    payload: String,
    #[serde(rename = "payloadType")]
    payload_type: String,
}

#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Predicate,
}

#[derive(Deserialize)]
struct Predicate {
    #[serde(default)]
    serialization: Option<Serialization>,
    resources: Vec<Resource>,
}

#[derive(Deserialize)]
struct Serialization {
    method: String,
}

#[derive(Deserialize)]
struct Resource {
    name: String,
    algorithm: String,
    digest: String,
}

/// Every file of the signed model with its digest, in the bundle's order.
///
/// # Errors
/// [`SignedManifestError`] for anything but a model-signing bundle with file serialization whose
/// files have BLAKE3 or SHA-256 digests, relative names, each once.
pub fn read_bundle(bundle: &[u8]) -> Result<Vec<SignedFile>, SignedManifestError> {
    let bundle: Bundle = serde_json::from_slice(bundle)
        .map_err(|e| SignedManifestError::NotABundle(e.to_string()))?;
    if bundle.envelope.payload_type != IN_TOTO_PAYLOAD {
        return Err(SignedManifestError::PayloadType(
            bundle.envelope.payload_type,
        ));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(bundle.envelope.payload.as_bytes())
        .map_err(|e| SignedManifestError::Statement(format!("payload is not base64 ({e})")))?;
    let statement: Statement = serde_json::from_slice(&payload)
        .map_err(|e| SignedManifestError::Statement(e.to_string()))?;
    if statement.kind != STATEMENT_TYPE {
        return Err(SignedManifestError::Statement(format!(
            "type {:?}, expected {STATEMENT_TYPE}",
            statement.kind
        )));
    }
    if statement.predicate_type != PREDICATE_TYPE {
        return Err(SignedManifestError::PredicateType(statement.predicate_type));
    }
    if let Some(s) = statement.predicate.serialization
        && s.method != "files"
    {
        return Err(SignedManifestError::Serialization(s.method));
    }
    let mut files: Vec<SignedFile> = Vec::new();
    for r in statement.predicate.resources {
        let bad = |problem| SignedManifestError::Resource {
            name: r.name.clone(),
            problem,
        };
        let algorithm = match r.algorithm.as_str() {
            "blake3" => DigestAlgorithm::Blake3,
            "sha256" => DigestAlgorithm::Sha256,
            _ => {
                return Err(SignedManifestError::Algorithm {
                    name: r.name,
                    algorithm: r.algorithm,
                });
            }
        };
        let digest = ShardDigest::from_hex(&r.digest)
            .map_err(|_| bad("its digest is not 64 hex characters"))?;
        if r.name.is_empty() || crate::manifest::leaves_its_directory(std::path::Path::new(&r.name))
        {
            return Err(bad("the name leaves the model's directory"));
        }
        if files.iter().any(|f| f.name == r.name) {
            return Err(bad("listed twice"));
        }
        files.push(SignedFile {
            name: r.name,
            algorithm,
            digest,
        });
    }
    if files.is_empty() {
        return Err(SignedManifestError::Empty);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

    use super::*;

    fn bundle(statement: &serde_json::Value) -> Vec<u8> {
        let payload =
            base64::engine::general_purpose::STANDARD.encode(statement.to_string().as_bytes());
        serde_json::json!({"dsseEnvelope": {"payload": payload, "payloadType": IN_TOTO_PAYLOAD}})
            .to_string()
            .into_bytes()
    }

    fn statement(resources: serde_json::Value, method: &str) -> serde_json::Value {
        serde_json::json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "model", "digest": {"sha256": "00"}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"serialization": {"method": method}, "resources": resources},
        })
    }

    #[test]
    fn every_broken_shape_is_refused_with_its_reason() {
        let hex = "ab".repeat(32);
        let ok = |name: &str, alg: &str| serde_json::json!({"name": name, "algorithm": alg, "digest": hex});
        let good = read_bundle(&bundle(&statement(
            serde_json::json!([
                ok("model.safetensors", "blake3"),
                ok("config.json", "sha256")
            ]),
            "files",
        )))
        .unwrap();
        assert_eq!(good.len(), 2);
        assert_eq!(good[0].algorithm, DigestAlgorithm::Blake3);
        assert_eq!(good[1].algorithm, DigestAlgorithm::Sha256);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{}".to_vec(), "not a model-signing bundle"),
            (
                serde_json::json!({"dsseEnvelope": {"payload": "!!", "payloadType": IN_TOTO_PAYLOAD}}).to_string().into_bytes(),
                "not base64",
            ),
            (
                serde_json::json!({"dsseEnvelope": {"payload": "", "payloadType": "text/plain"}}).to_string().into_bytes(),
                "not an in-toto statement",
            ),
            (bundle(&statement(serde_json::json!([ok("a", "blake2")]), "files")), "only blake3 and sha256"),
            (bundle(&statement(serde_json::json!([ok("a", "blake3")]), "shards")), "file serialization"),
            (bundle(&statement(serde_json::json!([ok("../token", "blake3")]), "files")), "leaves the model's directory"),
            (bundle(&statement(serde_json::json!([ok("/etc/x", "blake3")]), "files")), "leaves the model's directory"),
            (bundle(&statement(serde_json::json!([ok("a", "blake3"), ok("a", "sha256")]), "files")), "listed twice"),
            (bundle(&statement(serde_json::json!([{"name": "a", "algorithm": "blake3", "digest": "xyz"}]), "files")), "64 hex"),
            (bundle(&statement(serde_json::json!([]), "files")), "no files"),
        ];
        for (input, needle) in cases {
            let e = read_bundle(&input).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let mut other = statement(serde_json::json!([ok("a", "blake3")]), "files");
        other["predicateType"] = "https://slsa.dev/provenance/v1".into();
        assert!(matches!(
            read_bundle(&bundle(&other)),
            Err(SignedManifestError::PredicateType(_))
        ));
    }
}
