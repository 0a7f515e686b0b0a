//! The worker's key material: the seal key, and the audit signing key derived from it, come
//! from the worker token so that what one run writes can be checked later; without a token a
//! random key serves one run only, and the operator is told so.
//!
//! The token is read from `--token-file PATH` (or `VRAMCTL_TOKEN_FILE`), else from the
//! `VRAM_WORKER_TOKEN` environment variable; never from a command-line value, which any user
//! can read in the process list.

use std::path::{Path, PathBuf};

use vram_residency::SealKey;
use zeroize::Zeroizing;

use crate::cli::TokenArgs;
use crate::error::{CliError, CliResult};

/// Environment variable holding the worker token itself.
pub(crate) use vram_residency::token::TOKEN_ENV;
/// The environment variable naming the token file (as `--token-file`).
pub(crate) const TOKEN_FILE_ENV: &str = "VRAMCTL_TOKEN_FILE";

/// What the seal key is made from, kept (zeroized on drop) so that each manager a command
/// builds gets the same key.
enum Material {
    Token {
        token: Zeroizing<Vec<u8>>,
        worker_id: String,
    },
    Random(Zeroizing<[u8; 32]>),
}

/// The worker's key material and where it came from.
pub(crate) struct WorkerKey {
    material: Material,
    /// One line for the operator: where the key came from.
    pub(crate) origin: String,
}

impl WorkerKey {
    /// The seal key.
    pub(crate) fn seal_key(&self) -> CliResult<SealKey> {
        Ok(match &self.material {
            Material::Token { token, worker_id } => SealKey::derive(token, worker_id)?,
            Material::Random(bytes) => SealKey::from_array(**bytes),
        })
    }

    /// Whether the key comes from a token (and so is the same in every run).
    pub(crate) fn is_token_derived(&self) -> bool {
        matches!(self.material, Material::Token { .. })
    }
}

/// The token, if one was given.
fn token(args: &TokenArgs) -> CliResult<Option<(Zeroizing<Vec<u8>>, String)>> {
    // The environment's file is read here, not by clap: an empty `VRAMCTL_TOKEN_FILE=` means
    // none, and an exported one never conflicts with an option given on the command line
    // (`audit verify --public-key`).
    let from_env = std::env::var_os(TOKEN_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(path) = args.token_file.as_ref().or(from_env.as_ref()) {
        return read_token_file(path)
            .map(|t| Some((t, format!("token file {}", crate::output::shown(path)))));
    }
    Ok(vram_residency::token::token_from_env().map(|t| (t, format!("${TOKEN_ENV}"))))
}

fn read_token_file(path: &Path) -> CliResult<Zeroizing<Vec<u8>>> {
    let file = vram_residency::token::read_token_file(path).map_err(|e| {
        CliError::file(path, &e.to_string(), "give a file holding the worker token")
    })?;
    // As `ssh` does for a private key: whoever reads it can seal and sign as this worker.
    if let Some(warning) = file.shared_warning(&crate::output::shown(path)) {
        crate::output::warn(&format!("warning: {warning}"));
    }
    Ok(file.token)
}

/// A random key for a command that keeps nothing (`bench`, `demo`).
pub(crate) fn random() -> CliResult<WorkerKey> {
    Ok(WorkerKey {
        material: Material::Random(random_key()?),
        origin: "random for this run".to_owned(),
    })
}

/// The worker's seal key: derived from the token and worker id, or random for this run.
pub(crate) fn worker_key(args: &TokenArgs) -> CliResult<WorkerKey> {
    match token(args)? {
        Some((token, origin)) => {
            // Checked now, so that a short token is a clear error before anything starts.
            SealKey::derive(&token, &args.worker_id).map_err(|e| {
                CliError::bad_input(format!(
                    "{origin}: {e}; the worker token must be at least 16 bytes and the worker id 1 to 256 bytes"
                ))
            })?;
            Ok(WorkerKey {
                material: Material::Token {
                    token,
                    worker_id: args.worker_id.clone(),
                },
                origin: format!(
                    "derived from {origin} for worker {}",
                    crate::output::shown(&args.worker_id)
                ),
            })
        }
        None => Ok(WorkerKey {
            material: Material::Random(random_key()?),
            origin: format!(
                "random for this run (no --token-file or ${TOKEN_ENV}): nothing signed now can be checked \
                 against a key you hold; the audit log records its public key in its first record"
            ),
        }),
    }
}

fn random_key() -> CliResult<Zeroizing<[u8; 32]>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut())
        .map_err(|_| CliError::bad_input("the operating system's random source failed"))?;
    Ok(bytes)
}
