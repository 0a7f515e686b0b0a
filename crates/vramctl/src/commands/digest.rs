//! `vramctl digest FILE [--flat] [--leaf BYTES]`: the digest an operator records in a manifest.
//!
//! The file is read in 64 MiB chunks; tree leaves are hashed in parallel chunk by chunk, so the
//! speed is the parallel tree digest's and memory stays bounded.

use std::io::Read;
use std::path::Path;

use serde_json::json;
use vram_residency::digest::{DigestHasher, tree};
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

/// Digest of a file, streamed in chunks (leaves in parallel for the tree).
pub(crate) fn digest_file(
    path: &Path,
    alg: DigestAlgorithm,
    out: Output,
) -> CliResult<ShardDigest> {
    let (mut file, len) = open_model(path)?;
    let bar = out.progress(len, "hashing");
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut leaves = Vec::new();
    let mut flat = DigestHasher::new(alg);
    let mut filled = 0usize;
    loop {
        // Fill the whole chunk (reads may return less), so tree chunks hold whole leaves.
        let n = file
            .read(chunk.get_mut(filled..).unwrap_or_default())
            .map_err(|e| CliError::file(path, &format!("read failed ({e})"), "check the disk"))?;
        filled = filled.saturating_add(n);
        let done = n == 0;
        if filled == chunk.len() || (done && filled > 0) {
            let piece = chunk.get(..filled).unwrap_or_default();
            match alg.leaf_size() {
                Some(leaf) => leaves.extend(tree::leaf_digests(piece, leaf)),
                None => flat.update(piece),
            }
            bar.inc(u64::try_from(filled).unwrap_or(0));
            filled = 0;
        }
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    match alg.leaf_size() {
        Some(leaf) => Ok(tree::digest_from_leaf_digests(&leaves, leaf, len)?),
        None => Ok(flat.finalize()),
    }
}

pub(crate) fn run(out: Output, args: &DigestArgs) -> CliResult<Exit> {
    let alg = algorithm(args.flat, args.leaf)?;
    let digest = digest_file(&args.file, alg, out)?;
    out.result(format!("{}  {}", digest.to_hex(), args.file.display()));
    out.json(&json!({ "file": args.file.display().to_string(), "algorithm": alg.to_string(), "digest": digest.to_hex() }));
    Ok(Exit::Ok)
}
