//! `vramctl digest FILE [--flat] [--leaf BYTES]`: the digest an operator records in a manifest.
//!
//! The file is read in 64 MiB chunks and fed to `DigestHasher::update_parallel`, so tree leaves
//! are hashed in parallel and memory stays bounded.

use std::io::Read;
use std::path::Path;

use serde_json::json;
use vram_residency::digest::DigestHasher;
use vram_residency::{DigestAlgorithm, ShardDigest};

use crate::cli::DigestArgs;
use crate::error::{CliError, CliResult, Exit};
use crate::files::{READ_CHUNK, open_model};
use crate::output::Output;

pub(crate) fn algorithm(flat: bool, leaf: Option<u64>) -> CliResult<DigestAlgorithm> {
    match (flat, leaf) {
        (true, _) => Ok(DigestAlgorithm::Sha256),
        (false, None) => Ok(DigestAlgorithm::default()),
        (false, Some(l)) => {
            DigestAlgorithm::tree(l).map_err(|e| CliError::bad_input(format!("--leaf: {e}")))
        }
    }
}

/// Digest of a file, streamed in chunks (tree leaves hashed in parallel).
pub(crate) fn digest_file(
    path: &Path,
    alg: DigestAlgorithm,
    out: Output,
) -> CliResult<ShardDigest> {
    let (mut file, len) = open_model(path)?;
    let bar = out.progress(len, "hashing");
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut hasher = DigestHasher::new(alg);
    loop {
        let n = file
            .read(&mut chunk)
            .map_err(|e| CliError::file(path, &format!("read failed ({e})"), "check the disk"))?;
        let Some(piece) = chunk.get(..n).filter(|p| !p.is_empty()) else {
            break;
        };
        hasher.update_parallel(piece);
        bar.inc(u64::try_from(n).unwrap_or(0));
    }
    bar.finish_and_clear();
    Ok(hasher.finalize())
}

pub(crate) fn run(out: Output, args: &DigestArgs) -> CliResult<Exit> {
    let alg = algorithm(args.flat, args.leaf)?;
    let digest = digest_file(&args.file, alg, out)?;
    out.result(format!("{}  {}", digest.to_hex(), args.file.display()));
    out.json(&json!({ "file": args.file.display().to_string(), "algorithm": alg.to_string(), "digest": digest.to_hex() }));
    Ok(Exit::Ok)
}
