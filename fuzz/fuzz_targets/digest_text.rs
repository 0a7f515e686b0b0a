//! Digests as text, with their algorithm prefix, and checksum manifest lines (names are bytes,
//! UTF-8 or not): never panics, and whatever parses prints back to a line that parses to the
//! same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_types::DigestAlgorithm;
use vram_seal::ShardDigest;
use vramctl::manifest::{checksum_line, escape_name, parse_line, parse_tagged, tagged, unescape_name};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(alg) = text.parse::<DigestAlgorithm>() {
            assert_eq!(alg.to_string().parse::<DigestAlgorithm>().ok(), Some(alg));
        }
        if let Ok(digest) = ShardDigest::from_hex(text) {
            assert_eq!(digest.to_hex(), text.to_ascii_lowercase());
        }
        if let Some((alg, digest)) = parse_tagged(text, DigestAlgorithm::default()) {
            assert_eq!(parse_tagged(&tagged(alg, &digest), DigestAlgorithm::Sha256), Some((alg, digest)));
        }
    }
    for bare in [DigestAlgorithm::Sha256, DigestAlgorithm::Blake3] {
        if let Some((alg, digest, name)) = parse_line(data, bare) {
            // A line reads back the same when bare hex is read as the algorithm it came from.
            let line = checksum_line(alg, &digest, &name);
            assert_eq!(parse_line(&line, alg), Some((alg, digest, name)), "{line:?}");
        }
    }
    let (_, escaped) = escape_name(data);
    assert_eq!(unescape_name(&escaped).as_deref(), Some(data));
});
